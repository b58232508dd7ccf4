"""Build and launch the Gradio studio (placeholder page until the editing UI lands)."""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def build():
    import gradio as gr

    with gr.Blocks(title="Lip Sync Studio", analytics_enabled=False) as demo:
        gr.Markdown("# Lip Sync Studio\nThe editing studio is being built; see README.md.")
    return demo


def launch() -> None:
    demo = build()
    demo.queue(default_concurrency_limit=2).launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        show_api=False,
    )
