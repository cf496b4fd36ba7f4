"""The same client against ``python -m serve`` or Triton Inference Server (serving the repository that
``python -m pipeline triton`` wrote): Triton's own ``tritonclient``, binary tensors, nothing of ours.

    pip install "tritonclient[http,grpc]" numpy pillow
    python examples/triton_client.py [--url localhost:8000] [--image digit.png] [--prompt "The return value"]
    python examples/triton_client.py --grpc [--url localhost:8001]    # the same calls over gRPC

Lists the models, classifies an image (a drawn 7 when none is given) and, where the server has them,
continues a prompt with ``textgen`` and draws a digit with ``imagegen``.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
from tritonclient.utils import InferenceServerException

http = None  # tritonclient.http, or tritonclient.grpc with --grpc: the same calls


def a_seven() -> np.ndarray:
    """A 7 drawn in black on white, 28x28 (what a sketch sends: the graph crops it to the ink itself)."""
    image = np.full((28, 28), 255, np.uint8)
    image[5:8, 6:22] = 0
    for row in range(8, 24):
        col = 21 - (row - 8) // 2
        image[row, col - 1:col + 2] = 0
    return image[..., None]


def tensor(name: str, value: np.ndarray):
    datatype = "BYTES" if value.dtype == object else {"uint8": "UINT8", "int64": "INT64", "float32": "FP32"}[value.dtype.name]
    t = http.InferInput(name, list(value.shape), datatype)
    t.set_data_from_numpy(value)  # binary tensor data, tritonclient's default
    return t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", help="the server's address (Triton's and ours: port 8000 for HTTP, 8001 for gRPC)")
    ap.add_argument("--grpc", action="store_true", help="speak gRPC (tritonclient.grpc) instead of HTTP")
    ap.add_argument("--image", help="an image file to classify (default: a drawn 7)")
    ap.add_argument("--prompt", default="The return value of this function is")
    args = ap.parse_args()
    global http
    if args.grpc:
        import tritonclient.grpc as http
    else:
        import tritonclient.http as http
    args.url = args.url or ("localhost:8001" if args.grpc else "localhost:8000")
    client = http.InferenceServerClient(args.url)
    try:
        if not client.is_server_ready():
            print(f"error: the server at {args.url} is not ready", file=sys.stderr)
            return 1
        index = client.get_model_repository_index()
        models = {m.name for m in index.models} if args.grpc else {m["name"] for m in index}
    except (InferenceServerException, OSError) as e:
        print(f"error: cannot reach {args.url}: {e}", file=sys.stderr)
        return 1
    print("models:", ", ".join(sorted(models)))
    if "classify" in models:
        if args.image:
            from PIL import Image

            image = np.asarray(Image.open(args.image).convert("L"))[..., None]
        else:
            image = a_seven()
        result = client.infer("classify", [tensor("image", image[None])])
        probs = result.as_numpy("probs")[0]
        print(f"classify: {int(probs.argmax())} ({probs.max():.1%})")
    if "textgen" in models:
        result = client.infer("textgen", [tensor("prompt", np.array([args.prompt.encode()], dtype=object)),
                                          tensor("max_new_tokens", np.array([60], np.int64)),
                                          tensor("temperature", np.array([0.0], np.float32))])
        print(f"textgen: {args.prompt}{result.as_numpy('text')[0].decode()}")
    if "imagegen" in models:
        result = client.infer("imagegen", [tensor("label", np.array([3], np.int64)),
                                           tensor("count", np.array([4], np.int64))])
        images = result.as_numpy("images")
        print(f"imagegen: {images.shape[0]} images of {images.shape[1]}x{images.shape[2]}, mean ink "
              f"{1 - images.mean() / 255:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
