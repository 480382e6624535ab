"""Entry module for nnU-Net's external-trainer scan (``nnUNet_extTrainer``).

nnU-Net imports every module in this folder under a bare name and looks the trainer up by class
name.  This folder therefore holds only this re-export; the classes themselves live in the
regular package ``bus_nnunet.trainers`` so they pickle and unpickle normally in worker processes.
"""
from bus_nnunet.trainers import *  # noqa: F401,F403  (the names in bus_nnunet.trainers.__all__)
