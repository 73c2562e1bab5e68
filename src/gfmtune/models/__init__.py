"""Models: CROMA and SSL4EO-DINO encoders, temporal UPerNet decoder, U-TAE, registry."""
