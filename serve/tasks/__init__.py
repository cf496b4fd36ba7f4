"""Inference-side knowledge per task: numpy around the graph and the task's Gradio tab."""
from serve.tasks import classify

TABS = {"classify": classify}  # task -> module with TITLE and build_tab(bundle)
