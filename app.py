"""Lip Sync Studio web app: ``python app.py`` serves on 127.0.0.1:7860 (offline-safe).

GRADIO_SERVER_NAME / GRADIO_SERVER_PORT are respected. Everything is built in studio.ui.
"""

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

if __name__ == "__main__":
    from studio.ui.app import launch

    launch()
