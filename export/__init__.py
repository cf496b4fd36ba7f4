"""torch -> ONNX export, verification against PyTorch, ONNX Runtime variants, TensorRT engines.

Takes modules, example inputs and data iterables as arguments; reads no data set itself.
"""
