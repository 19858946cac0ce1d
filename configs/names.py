"""makemore's task: learn 32,033 first names character by character, then invent new ones.

makemore's transformer (4 layers, 4 heads, 64 wide; batch 32, weight decay 0.01) on the built-in `names`
corpus, one name per line in a fixed random order (the last 10% is val), at lr 2e-3 (makemore's 5e-4
reached val 2.13 in these 3000 steps, against 2.05):
  python scripts/train.py --config=configs/names.py --workdir=runs/names
  python scripts/sample.py --workdir=runs/names --num_samples=20     # twenty names, one per sample
Expected on 2 CPU cores: best val loss 2.055 in under 2 minutes; 80% of 1,000 sampled names are in
neither split (the README's results).
"""

from configs import shakespeare_char


def get_config(arg: str | None = None):
    c = shakespeare_char.get_config()
    c.data.source = "names"  # $GPTJAX_DATA_DIR/names/names.txt, the cache, or makemore's names.txt
    c.model.update(block_size=32, n_layer=4, n_head=4, n_embd=64, dropout=0.0)  # ~2 names of context
    c.opt.update(lr=2e-3, min_lr=2e-4, warmup_iters=100, lr_decay_iters=3000, weight_decay=0.01)
    c.batch_size = 32
    c.max_iters = 3000
    c.eval_interval = 500
    c.eval_iters = 50
    c.log_interval = 50
    c.checkpoint_interval = 500
    # A sample is one name: it starts after a newline and ends at the next (the longest name has 15 letters).
    c.sample.update(prompt="\n", max_new_tokens=20, temperature=1.0, top_k=0, stop="\n")
    if arg:
        raise ValueError(f"configs/names.py takes no variant, got {arg!r}")
    return c
