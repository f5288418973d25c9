"""Independent NumPy float64 references of the blocks, written from shared/polynl-math.md."""

import numpy as np


def polynl(x_tokens, wq, bq, wk, bk, wv, bv, wo, bo, alpha, beta, norm=None):
    """Y = alpha X + beta norm((X Wq + bq) * mean_n((X Wk + bk)(X Wv + bv)) Wo + bo) for X (B, N, C).

    ``norm`` is (running_mean, running_var, weight, bias, eps) of an eval-mode BatchNorm or None.
    """
    x = np.asarray(x_tokens, np.float64)
    q = x @ wq + bq
    k = x @ wk + bk
    v = x @ wv + bv
    m = (k * v).mean(axis=1, keepdims=True)
    p = (q * m) @ wo + bo
    if norm is not None:
        mean, var, weight, bias, eps = norm
        p = (p - mean) / np.sqrt(var + eps) * weight + bias
    return alpha * x + beta * p


def block_weights(block):
    """The block's parameters as float64 NumPy matrices in the reference's convention."""
    def matrix(proj):
        w = proj.weight.detach().double().numpy()
        return w.reshape(w.shape[0], -1).T

    def bias(proj):
        return (proj.bias.detach().double().numpy() if proj.bias is not None
                else np.zeros(proj.weight.shape[0]))

    norm = None
    if block.norm is not None:
        bn = block.norm
        norm = (bn.running_mean.double().numpy(), bn.running_var.double().numpy(),
                bn.weight.detach().double().numpy(), bn.bias.detach().double().numpy(), bn.eps)
    return dict(wq=matrix(block.query), bq=bias(block.query), wk=matrix(block.key), bk=bias(block.key),
                wv=matrix(block.value), bv=bias(block.value), wo=matrix(block.out), bo=bias(block.out),
                alpha=float(block.alpha.detach()), beta=float(block.beta.detach()), norm=norm)


def polynl2d(x_maps, block):
    b, c, h, w = x_maps.shape
    tokens = np.asarray(x_maps, np.float64).reshape(b, c, h * w).transpose(0, 2, 1)
    y = polynl(tokens, **block_weights(block))
    return y.transpose(0, 2, 1).reshape(b, c, h, w)


def nonlocal2d(x_maps, block):
    """Y = X + norm(W_out(f(theta, phi) g)) with the N x N pairwise matrix."""
    x = np.asarray(x_maps, np.float64)
    b, c, h, w = x.shape

    def conv(proj, t):
        wt = proj.weight.detach().double().numpy().reshape(proj.weight.shape[0], -1)
        return np.einsum("oc,bcn->bon", wt, t) + proj.bias.detach().double().numpy()[None, :, None]

    flat = x.reshape(b, c, h * w)
    theta, phi, g = conv(block.theta, flat), conv(block.phi, flat), conv(block.g, flat)
    pairwise = np.einsum("bcn,bcm->bnm", theta, phi)
    if block.mode == "embedded_gaussian":
        pairwise = np.exp(pairwise - pairwise.max(axis=-1, keepdims=True))
        pairwise /= pairwise.sum(axis=-1, keepdims=True)
    else:
        pairwise /= pairwise.shape[-1]
    z = np.einsum("bnm,bcm->bcn", pairwise, g)
    p = conv(block.out, z)
    if block.norm is not None:
        bn = block.norm
        p = ((p - bn.running_mean.double().numpy()[None, :, None])
             / np.sqrt(bn.running_var.double().numpy()[None, :, None] + bn.eps)
             * bn.weight.detach().double().numpy()[None, :, None] + bn.bias.detach().double().numpy()[None, :, None])
    return x + p.reshape(b, c, h, w)
