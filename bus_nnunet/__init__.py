"""bus-nnunet: breast and thyroid ultrasound segmentation on top of nnU-Net v2.

Importing this package is cheap (no torch, no nnU-Net); sub-packages import what they need.
"""
__version__ = "0.1.0"
