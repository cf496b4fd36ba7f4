"""The serving side: a torch-free bundle runtime (numpy + onnxruntime) and the Gradio web app.

Never imports torch, ``models`` or ``pipeline``: the bundle folder is the only thing it shares with
training.
"""
