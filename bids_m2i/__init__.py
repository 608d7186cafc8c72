"""bids_m2i: reconstruct what a person saw or imagined from their fMRI, as a BIDS-App."""

__version__ = "0.1.0"
