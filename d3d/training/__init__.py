"""Training and evaluation: data preparation and loading (``data``), the seed's training recipe
(``train``), PSNR/SSIM evaluation (``evaluate``, ``metrics``) and MATLAB-compatible bicubic resizing
(``imresize``). A floor above the runtime: the model layer and the runtime never import it."""
