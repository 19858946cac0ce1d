"""iGPT in miniature: learn handwritten digits pixel by pixel, then draw new ones of a chosen class.

scikit-learn's 8x8 digits (1,797 images, 17 grey levels; bundled with scikit-learn: pip install -e
'.[art]') as iGPT sees images: one token per pixel in raster order after a start token, here the
digit's class, so that sampling can ask for a "7". The last 10% of a fixed shuffle is val.
  python scripts/train.py --config=configs/digits.py --workdir=runs/digits
  python scripts/sample_images.py --workdir=runs/digits    # a grid of new digits, one row per class
Variant `:uncond` starts every image with the same start token (SOS) instead of its class.
Expected on 2 CPU cores: see the README's results (best val loss in nats per pixel, wall time).
"""

from configs import shakespeare_char


def get_config(arg: str | None = None):
    c = shakespeare_char.get_config()
    c.data.source = "digits"  # "digits", an .npz of images (+ labels), or a folder / glob of image files
    c.data.tokenizer = "palette"  # one token per pixel: the index of its nearest palette colour
    c.data.image_size = 8  # pixels per side: images are centre-cropped and resized to this square
    c.data.channels = 1  # 1: grey, 3: RGB
    c.data.colors = 17  # palette size (k-means; iGPT uses 512 for RGB): 17 keeps every grey level here
    c.data.class_conditional = arg != "uncond"  # the start token is the class: sample a chosen digit
    c.model.update(block_size=64, n_layer=4, n_head=4, n_embd=128, dropout=0.1)  # block = 8 x 8 pixels
    c.opt.update(lr=1e-3, min_lr=1e-4, warmup_iters=100, lr_decay_iters=2000)
    c.batch_size = 32  # images; 2,048 pixels a step
    c.max_iters = 2000
    c.eval_interval = 250
    c.eval_iters = 20
    c.log_interval = 50
    c.checkpoint_interval = 250
    c.sample.update(temperature=1.0, top_k=0)  # scripts/sample_images.py's defaults
    if arg not in (None, "", "uncond"):
        raise ValueError(f"configs/digits.py takes no variant or 'uncond', got {arg!r}")
    return c
