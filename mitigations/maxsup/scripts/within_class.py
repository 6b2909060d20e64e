#!/usr/bin/env python
"""Generation-0 d_within / R^2 of CE, label smoothing and MaxSup on digits-classify, on held-out (the task metric)
and on training-set features, for the MLP at 600 and 2000 steps and the small CNN at 600 steps (seeds 0-2).

Usage: python mitigations/maxsup/scripts/within_class.py ROOT [mlp600,cnn600,mlp2000]; one JSON line per run.
"""
import json, sys, time
import numpy as np, torch
torch.set_num_threads(1)
from collapsekit.plugins.tasks.digits_classify import DigitsClassify, cosine_class_variation
from collapsekit.testing import run_tiny, quiet_lightning
root = sys.argv[1]
configs = {"mlp600": ({}, 600), "mlp2000": ({}, 2000), "cnn600": ({"arch": "cnn", "hidden": 16}, 600)}
only = sys.argv[2].split(",") if len(sys.argv) > 2 else list(configs)
for cname in only:
    extra, steps = configs[cname]
    for seed in (0, 1, 2):
        for mname, plugins in (("ce", []), ("ls", ["label-smoothing"]), ("maxsup", ["maxsup"])):
            t = time.time()
            task = DigitsClassify(train_size=1000, heldout_size=500, **extra)
            name = f"{cname}-{mname}-{seed}"
            with quiet_lightning():
                (m,) = run_tiny(root, plugins, task, name=name, generations=1, max_steps=steps, seed=seed)
            model = task.load_model(f"{root}/{name}/gen_0").eval()
            with torch.no_grad():
                _, hid = model.forward_all(torch.as_tensor(task.train_images).float())
            dw_tr, r2_tr = cosine_class_variation(hid[-1].numpy(), task.train_labels)
            print(json.dumps({"cfg": cname, "method": mname, "seed": seed, "acc": round(m["accuracy"], 4),
                              "d_within": round(m["within_class_variation"], 4), "R2": round(m["class_separation"], 4),
                              "d_within_train": round(dw_tr, 4), "R2_train": round(r2_tr, 4),
                              "s": round(time.time() - t, 1)}), flush=True)
