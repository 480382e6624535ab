"""Inference on a user's own images: one pipeline, three modules.

* :mod:`.images` -- reading ordinary images (PNG, JPEG, DICOM, NIfTI...) into what a trained model
  expects (its channels, its spacing), and the messages that name unreadable files;
* :mod:`.segmentation` -- loading trained models (one, a fold ensemble, or several models with
  weights) and predicting segmentations and probabilities (``bus-nnunet predict``);
* :mod:`.classification` -- whole-image class probabilities of a classifying model and the
  ``classification.csv`` that validation and ``bus-nnunet classify`` write.
"""
