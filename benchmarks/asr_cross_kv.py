"""The speech decoder's two possible inputs, side by side: the encoder's states (each decoder step
projects them to its layers' cross-attention keys and values again), or the per-layer cross keys/values
the encoder graph outputs once per recording (what the pipeline exports since issue 24's second part).

    .venv/bin/python benchmarks/asr_cross_kv.py artifacts/asr/RUN [--rounds 5]

Both decoders are exported from the run's weights with the pipeline's own exporter, and run in ONNX
Runtime (2 threads) and torch eager: the median ms of one decoder step (10 cached characters) and of
a whole greedy transcription through serve's own loop (voice activity, segments, encoder, decoder steps)
of held-out speech cut to 1, 5 and 20 s, at batch 1 and 8. The transcripts of the two forms must be
the same (they are the same arithmetic, regrouped).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from export.benchmark import sample_call, summarize  # noqa: E402
from export.cache_graph import CacheStepGraph  # noqa: E402
from export.contract import ExportContract, TensorSpec  # noqa: E402
from export.torch_to_onnx import export_onnx  # noqa: E402
from export.verify import TorchRunner  # noqa: E402
from pipeline.run import load_run  # noqa: E402
from pipeline.tasks import asr  # noqa: E402
from serve.kv_cache import KVCache, cross_names, past_names  # noqa: E402
from serve.runtime import OrtSession  # noqa: E402
from serve.tasks import asr as loop  # noqa: E402


class StatesStep(nn.Module):
    """The other form's decoder step: input_ids, states (N, S, D), states_mask, past -> logits, present;
    the cross keys/values are computed from the states inside, at every step (flattened into graph I/O
    by ``CacheStepGraph``, as the pipeline's decoder is)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def step(self, input_ids, states, states_mask, past):
        return self.model.step(input_ids, states_mask, past, self.model.cross_cache(states))


class StatesEncoder(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, waveform, lengths):
        return self.model.encode(waveform, lengths)


def states_contracts(m, window: float) -> dict[str, ExportContract]:
    """The pipeline's contracts with ``states`` (N, S, D) in place of the cross keys/values."""
    ours = asr.contracts(m, window)
    enc, dec = ours["encoder"], ours["decoder"]
    states = TensorSpec("states", "float32", ("batch", "frames", m.dim), "encoder states, one per 40 ms")
    cross = set(cross_names(m.decoder_layers))
    encoder = ExportContract(inputs=enc.inputs, outputs=(states, *enc.outputs[:2]), dims=enc.dims, parity=enc.parity,
                             exact=enc.exact)
    inputs = [s for s in dec.inputs if s.name not in cross]
    decoder = ExportContract(inputs=(inputs[0], states, *inputs[1:]), outputs=dec.outputs, dims=dec.dims,
                             parity=dec.parity)
    return {"encoder": encoder, "decoder": decoder}


def through_serve_loop(runners: dict, layers: int) -> dict:
    """The states form's runners dressed as the cross form's, so serve's own loop (voice activity,
    segments, greedy) runs them unchanged: the encoder's states travel under the first cross name, the
    others are empty, and the decoder gets them back as ``states``."""
    names = cross_names(layers)

    def encoder(feeds):
        out = dict(runners["encoder"](feeds))
        states = out.pop("states")
        out[names[0]] = states
        out.update({n: np.zeros((states.shape[0], 0), np.float32) for n in names[1:]})
        return out

    def decoder(feeds):
        feeds = {k: v for k, v in feeds.items() if k not in names[1:]}
        feeds["states"] = feeds.pop(names[0])
        return runners["decoder"](feeds)

    return {"encoder": encoder, "decoder": decoder}


def median_ms(fn, rounds: int) -> float:
    return summarize(sample_call(fn, seconds=0.0, min_runs=rounds, warmup=1))["median_ms"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(2)
    run = load_run(args.run)
    m, window = run.cfg.model, run.cfg.data.window
    model = run.model.eval()
    spec = asr.cache_spec(m)
    max_tokens = run.cfg.inference.max_tokens
    ours = asr.contracts(m, window)
    theirs = states_contracts(m, window)
    graphs = run.task.graphs(model, run.data, run.cfg)
    gen = torch.Generator().manual_seed(0)
    wav, lengths = torch.randn(2, 24000, generator=gen) * 0.1, torch.tensor([24000, 20000])
    with torch.no_grad():
        states, mask, _ = model.encode(wav, lengths)
    past = {n: torch.randn(2, m.heads, 3, m.head_dim, generator=gen) for n in past_names(m.decoder_layers)}
    example = {"input_ids": torch.tensor([[1, 7], [1, 12]]), "states": states, "states_mask": mask, **past}
    modules = {"cross": {"encoder": graphs["encoder"].module, "decoder": graphs["decoder"].module},
               "states": {"encoder": StatesEncoder(model),
                          "decoder": CacheStepGraph(StatesStep(model), "step", m.decoder_layers, leading=3)}}
    with tempfile.TemporaryDirectory() as tmp:
        runners = {}
        for form, contracts in (("cross", ours), ("states", theirs)):
            ort_r, torch_r = {}, {}
            for g in ("encoder", "decoder"):
                path = Path(tmp) / f"{form}-{g}.onnx"
                ex = graphs[g].example if form == "cross" else ({"waveform": wav, "lengths": lengths} if g == "encoder"
                                                                else example)
                export_onnx(modules[form][g], ex, contracts[g], path, {})
                ort_r[g] = OrtSession(str(path), threads=2)
                torch_r[g] = TorchRunner(modules[form][g], contracts[g])
            if form == "states":
                ort_r, torch_r = (through_serve_loop(r, m.decoder_layers) for r in (ort_r, torch_r))
            runners[f"ORT, {form}"], runners[f"torch eager, {form}"] = ort_r, torch_r
        speech = [w for w, t in zip(run.data.test.waves, run.data.test.texts) if t]
        joined = np.concatenate([np.concatenate([w, np.zeros(6400, np.float32)]) for w in speech])
        print(f"CPU threads 2; decoder {m.decoder_layers} layers x {m.heads} heads x {m.head_dim}; "
              f"median of {args.rounds} rounds\n")
        print("| backend, decoder input | " + " | ".join(f"{s:g} s x {n}" for n in (1, 8) for s in (1.0, 5.0, 20.0))
              + " | one step, 5 s x 8 |")
        print("| --- |" + " ---: |" * 7)
        texts = {}
        for name, r in runners.items():
            cells = []
            for n in (1, 8):
                for seconds in (1.0, 5.0, 20.0):
                    length = int(seconds * loop.RATE)
                    clips = [joined[(i * length) % (len(joined) - length):][:length] for i in range(n)]
                    limits = loop.Limits(window, batch=8)
                    decoding = loop.Decoding(1, max_tokens, ctc_weight=0)  # the decoder alone: its input is measured
                    call = lambda: loop.transcribe_many(r, clips, spec, decoding, limits)  # noqa: E731
                    cells.append(f"{median_ms(call, args.rounds):.1f}")
            five = [joined[i * 80000:(i + 1) * 80000] for i in range(8)]
            enc = loop.encode(r, five)
            feeds = {"input_ids": np.full((8, 1), 5, np.int64),
                     **{k: np.zeros((8, m.heads, 10, m.head_dim), np.float32) for k in KVCache(spec, 8).feeds()},
                     **{k: v for k, v in enc.items() if k not in ("log_mel", "ctc_log_probs")}}
            cells.append(f"{median_ms(lambda: r['decoder'](feeds), 20 * args.rounds):.2f}")
            print(f"| {name} | " + " | ".join(cells) + " |")
            texts[name] = [t.text for t in loop.transcribe_many(r, speech[:64], spec,
                                                                 loop.Decoding(1, max_tokens, ctc_weight=0),
                                                                 loop.Limits(window, batch=8))]
        base = texts["ORT, cross"]
        for name, t in texts.items():
            same = np.mean([a == b for a, b in zip(base, t)])
            print(f"\n{name}: {same:.0%} of 64 held-out transcripts equal ORT's with cross keys/values", end="")
        print()


if __name__ == "__main__":
    main()
