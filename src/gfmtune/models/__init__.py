"""Models: the frame encoders (CROMA, SSL4EO-S12 DINO and MoCo on one ViT-S/16, Prithvi-EO-2.0),
the temporal UPerNet decoder with its L-TAE, the U-TAE baseline, the registry that names every
model (plug-in encoders included), their checkpoints and input policies, and ``gfmtune params``
and ``gfmtune weights``."""
