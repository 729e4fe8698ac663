"""EnCLAP data, one sub-package per stage: ``extraction`` (offline feature extraction), ``corpora`` (split
files, the demo corpus) and ``training`` (dataset, collator, masking); the scripts in this folder
(preprocess.py, infer_encodec.py, infer_clap.py, make_csv.py) are the doors."""
