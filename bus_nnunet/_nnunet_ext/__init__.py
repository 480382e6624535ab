"""Folder nnU-Net scans for external trainers (see bus_nnunet.registration)."""
