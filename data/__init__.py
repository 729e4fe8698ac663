"""EnCLAP data package: audio front end, feature encoders, preprocessing, datasets and collation."""
