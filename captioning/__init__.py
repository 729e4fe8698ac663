"""The captioning pipeline (audio -> features -> batch -> generate -> captions) and the
command-line helpers shared by ``evaluate.py``, ``inference.py`` and ``gradio_app.py``."""
