"""Runs INSIDE the Debian 11 root, under its python3 (3.9) with BVLC Caffe 1.0: no project imports.

Caffe itself makes the weights and the reference outputs that ``tests/test_caffe_engine.py``
checks our converted models against:

1. ``caffe.Net(deploy.prototxt, TEST)`` builds the official topology;
2. every parameter blob is filled with realistic random values (BN scale factor 999.98, a few
   channels whose variance is comparable to eps, Scale gamma ~ sqrt(var + eps), biased ASPP
   classifiers), seeded;
3. ``net.save`` writes the caffemodel (Caffe's own writer: every layer, bottoms, tops, params);
4. each ``input_*.npy`` (1x3xHxW) is reshaped in and forwarded; the named output blob is
   saved as ``output_*.npy``.

    python3 caffe_side.py DIR OUTPUT_BLOB SEED
"""

import sys
from pathlib import Path

import caffe
import numpy as np

BN_SCALE_FACTOR = 999.98


def fill(net, rng):
    last_var = {}  # BatchNorm top blob -> its variance, for the Scale that follows it
    for name, layer in zip(net._layer_names, net.layers):
        params = net.params[name] if name in net.params else []
        bottoms = net.bottom_names[name]
        tops = net.top_names[name]
        if layer.type == "Convolution":
            w = params[0].data
            out_c, in_c, kh, kw = w.shape
            classifier = name.startswith(("fc1_", "fc8_"))
            std = 0.01 if classifier else np.sqrt(2.0 / (in_c * kh * kw))
            w[...] = rng.normal(0.0, std, size=w.shape)
            if len(params) > 1:
                params[1].data[...] = rng.normal(0.0, 0.5 if classifier else 0.1, size=params[1].data.shape)
        elif layer.type == "InnerProduct":
            for p in params:
                p.data[...] = rng.normal(0.0, 0.01, size=p.data.shape)
        elif layer.type == "BatchNorm":
            c = params[0].data.shape[0]
            mean = rng.normal(0.0, 0.2, size=c)
            var = rng.uniform(0.3, 2.0, size=c)
            tiny = rng.random(c) < 0.05
            var[tiny] = rng.uniform(1e-6, 2e-5, size=int(tiny.sum()))
            params[0].data[...] = mean * BN_SCALE_FACTOR
            params[1].data[...] = var * BN_SCALE_FACTOR
            params[2].data[...] = BN_SCALE_FACTOR
            last_var[tops[0]] = var
        elif layer.type == "Scale":
            var = last_var[bottoms[0]]
            gamma = rng.uniform(0.5, 1.0, size=var.shape) * np.sqrt(var + 1e-5)
            if "branch2c" in name:
                gamma *= 0.2  # keep 33 residual additions from blowing up the activations
            params[0].data[...] = gamma
            params[1].data[...] = rng.normal(0.0, 0.1, size=var.shape)


def main():
    out_dir, blob, seed = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    caffe.set_mode_cpu()
    net = caffe.Net(str(out_dir / "deploy.prototxt"), caffe.TEST)
    fill(net, np.random.default_rng(seed))
    net.save(str(out_dir / "caffe_written.caffemodel"))
    for path in sorted(out_dir.glob("input_*.npy")):
        x = np.load(str(path)).astype(np.float32)
        net.blobs["data"].reshape(*x.shape)
        net.reshape()
        net.blobs["data"].data[...] = x
        net.forward()
        np.save(str(out_dir / path.name.replace("input_", "output_")), net.blobs[blob].data.astype(np.float32))
    print("ok")


if __name__ == "__main__":
    main()
