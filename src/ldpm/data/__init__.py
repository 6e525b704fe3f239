"""Raw fastMRI-format data: ISMRMRD headers, the embedded dataset builder, preprocessing and masks."""
