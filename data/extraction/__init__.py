"""Offline feature extraction: the audio front end, the codec and embedding encoders, batching
and the feature stores that preprocessing (``data/preprocess.py``) writes."""
