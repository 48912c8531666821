"""Synthetic face embeddings shaped like a real model's, for galleries larger than LFW.

Uniform random unit vectors are a poor stand-in for faces: in 128 dimensions every pair of them is
almost orthogonal (distance ~1.0 +- 0.09), they have no identity structure, and approximate indexes
(IVF, HNSW) behave quite differently on them. Real embeddings are anisotropic, share a common mean
direction, and cluster by identity. The generator here is a two-level Gaussian fitted to a real model's
embeddings of LFW::

    centre_i  = mean + b * B z_i            one per identity        (z ~ N(0, I))
    spread_i  = a * exp(s * u_i - s^2 / 2)  one per identity        (u ~ N(0, 1))
    image_ij  = normalise(centre_i + spread_i * W e_ij)             (e ~ N(0, I))

``B`` and ``W`` are square roots of the between-identity and within-identity covariance of the real
embeddings; the scalars ``a``, ``b`` and ``s`` are then fitted so that the *genuine* (same identity) and
*impostor* (different identities) distance distributions of synthetic pairs match those of real LFW
pairs (mean and standard deviation of each; ``s`` lets some people vary more than others, which is
what widens the real genuine distribution). :func:`fit` returns both the generator and a report of
real vs synthetic distance statistics, so a reader can check the shape.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from facesearch import distance


@dataclass
class FaceGenerator:
    mean: np.ndarray  # d
    between: np.ndarray  # d x d, B with B B^T = between-identity covariance
    within: np.ndarray  # d x d, W with W W^T = within-identity covariance
    a: float = 1.0  # within-identity scale
    b: float = 1.0  # between-identity scale
    s: float = 0.0  # log-normal spread of the within-identity scale across identities

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    def identities(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``n`` new identities: centres (n x d) and within-identity spreads (n)."""
        z = rng.standard_normal((n, self.dim), dtype=np.float32)
        u = rng.standard_normal(n).astype(np.float32)
        spread = self.a * np.exp(self.s * u - self.s**2 / 2)
        return (self.mean + self.b * (z @ self.between.T)).astype(np.float32), spread.astype(np.float32)

    def images(self, centres: np.ndarray, spread: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One new image (a unit vector) per row of ``centres`` (with its identity's ``spread``)."""
        e = rng.standard_normal(centres.shape, dtype=np.float32)
        return distance.normalize(centres + spread[:, None] * (e @ self.within.T))

    def save(self, path) -> None:
        np.savez(path, mean=self.mean, between=self.between, within=self.within, a=self.a, b=self.b, s=self.s)

    @classmethod
    def load(cls, path) -> "FaceGenerator":
        z = np.load(path)
        return cls(z["mean"], z["between"], z["within"], float(z["a"]), float(z["b"]), float(z["s"]))


def gallery_sizes(n_faces: int, rng: np.random.Generator, mean_per_identity: float = 5.0) -> np.ndarray:
    """Faces per identity for a gallery of exactly ``n_faces``: 1 + Poisson(mean - 1), trimmed to fit."""
    sizes = 1 + rng.poisson(mean_per_identity - 1.0, int(n_faces / mean_per_identity * 1.2) + 16)
    cum = np.cumsum(sizes)
    k = int(np.searchsorted(cum, n_faces))
    sizes = sizes[: k + 1].copy()
    sizes[-1] -= int(cum[k] - n_faces)
    return sizes[sizes > 0]


def _sqrtm_psd(c: np.ndarray, floor: float) -> np.ndarray:
    w, v = np.linalg.eigh((c + c.T) / 2)
    w = np.maximum(w, floor)
    return (v * np.sqrt(w)).astype(np.float32)


def _stats(d: np.ndarray) -> dict:
    d = np.asarray(d, np.float64)
    p = np.percentile(d, [5, 25, 50, 75, 95])
    return {"mean": round(float(d.mean()), 4), "std": round(float(d.std()), 4),
            "p5": round(float(p[0]), 4), "p25": round(float(p[1]), 4), "p50": round(float(p[2]), 4),
            "p75": round(float(p[3]), 4), "p95": round(float(p[4]), 4), "n": int(len(d))}


def real_pairs(emb: np.ndarray, labels: np.ndarray, rng: np.random.Generator, n_impostor: int = 20000,
               max_genuine_per_identity: int = 15) -> tuple[np.ndarray, np.ndarray]:
    """Genuine distances (all same-identity pairs, capped per identity) and random impostor distances."""
    gen = []
    for lab in np.unique(labels):
        idx = np.flatnonzero(labels == lab)
        if len(idx) < 2:
            continue
        ii, jj = np.triu_indices(len(idx), 1)
        if len(ii) > max_genuine_per_identity:
            pick = rng.choice(len(ii), max_genuine_per_identity, replace=False)
            ii, jj = ii[pick], jj[pick]
        gen.append(distance.paired(emb[idx[ii]], emb[idx[jj]]))
    i = rng.integers(0, len(emb), n_impostor * 2)
    j = rng.integers(0, len(emb), n_impostor * 2)
    keep = labels[i] != labels[j]
    i, j = i[keep][:n_impostor], j[keep][:n_impostor]
    return np.concatenate(gen), distance.paired(emb[i], emb[j])


def fit(emb: np.ndarray, labels: np.ndarray, seed: int = 0, n_pairs: int = 3000) -> tuple[FaceGenerator, dict]:
    """Fit the generator to real unit-norm embeddings ``emb`` (n x d) of identities ``labels``."""
    rng = np.random.default_rng(seed)
    emb = np.asarray(emb, np.float32)
    labels = np.asarray(labels)
    uniq, inv, counts = np.unique(labels, return_inverse=True, return_counts=True)
    multi = counts[inv] >= 2
    means = np.zeros((len(uniq), emb.shape[1]), np.float64)
    np.add.at(means, inv, emb)
    means /= counts[:, None]
    resid = (emb - means[inv])[multi]
    n_groups = int((counts >= 2).sum())
    sw = resid.T @ resid / max(1, len(resid) - n_groups)
    m = means[counts >= 2]
    sb_raw = np.cov(m, rowvar=False)
    sb = sb_raw - np.mean(1.0 / counts[counts >= 2]) * sw  # remove the within-noise left in identity means
    floor = 1e-6 * float(np.trace(sw)) / emb.shape[1]
    gen = FaceGenerator(emb.mean(0).astype(np.float32), _sqrtm_psd(sb, floor), _sqrtm_psd(sw, floor))

    real_gen, real_imp = real_pairs(emb, labels, rng)
    target = np.array([real_gen.mean(), real_gen.std(), real_imp.mean(), real_imp.std()])

    # common random numbers: the same draws for every (a, b, s), so the objective is smooth
    d = emb.shape[1]
    z = rng.standard_normal((2 * n_pairs, d)).astype(np.float32)
    e = rng.standard_normal((2 * n_pairs, d)).astype(np.float32)
    u = rng.standard_normal((2 * n_pairs, 1)).astype(np.float32)
    zb, ew = z @ gen.between.T, e @ gen.within.T
    ew2 = np.roll(ew, 1, axis=0)  # another image's noise, independent of ew row by row

    def synth(a: float, b: float, sp: float):
        c = gen.mean + b * zb
        k = a * np.exp(sp * u - sp**2 / 2)
        x = distance.normalize(c + k * ew)  # image 1 of centre j
        y = distance.normalize(c + k * ew2)  # image 2 of centre j
        return distance.paired(x[:n_pairs], y[:n_pairs]), distance.paired(x[:n_pairs], x[n_pairs:])

    scale = np.array([1.0, 0.5, 1.0, 0.5])

    def loss(p) -> float:
        g, im = synth(np.exp(p[0]), np.exp(p[1]), p[2])
        st = np.array([g.mean(), g.std(), im.mean(), im.std()])
        return float(np.sum(((st - target) / scale) ** 2))

    best = np.array([0.0, 0.0, 0.25])
    for span in (np.array([1.0, 1.0, 0.2]), np.array([0.4, 0.4, 0.1]), np.array([0.15, 0.15, 0.05]),
                 np.array([0.05, 0.05, 0.02]), np.array([0.015, 0.015, 0.008])):  # coarse-to-fine: log a, log b, s
        grids = [best[i] + np.linspace(-span[i], span[i], 5) for i in range(3)]
        grids[2] = np.clip(grids[2], 0.0, None)
        cand = [(loss(p), tuple(p)) for p in np.stack(np.meshgrid(*grids, indexing="ij"), -1).reshape(-1, 3)]
        best = np.array(min(cand)[1])
    gen.a, gen.b, gen.s = float(np.exp(best[0])), float(np.exp(best[1])), float(best[2])

    # check on fresh draws, sampled the way the benchmark samples galleries and probes
    rng2 = np.random.default_rng(seed + 1)
    c, sp = gen.identities(n_pairs, rng2)
    x1, x2 = gen.images(c, sp, rng2), gen.images(c, sp, rng2)
    c2, sp2 = gen.identities(n_pairs, rng2)
    x3 = gen.images(c2, sp2, rng2)
    syn_gen, syn_imp = distance.paired(x1, x2), distance.paired(x1, x3)
    report = {
        "generator": "centre = mean + b*B z; spread = a*exp(s*u - s^2/2); image = normalise(centre + spread*W e); "
                     "B, W from the real between/within-identity covariances; a, b, s fitted to the genuine and "
                     "impostor distance mean and std",
        "a_within_scale": round(gen.a, 4),
        "b_between_scale": round(gen.b, 4),
        "s_spread_lognormal": round(gen.s, 4),
        "real_embeddings": int(len(emb)),
        "real_identities": int(len(uniq)),
        "between_trace": round(float(np.trace(sb)), 5),
        "within_trace": round(float(np.trace(sw)), 5),
        "mean_norm": round(float(np.linalg.norm(gen.mean)), 4),
        "genuine": {"real": _stats(real_gen), "synthetic": _stats(syn_gen)},
        "impostor": {"real": _stats(real_imp), "synthetic": _stats(syn_imp)},
    }
    return gen, report


def rank1_identification(gallery: np.ndarray, gallery_labels: np.ndarray, probes: np.ndarray,
                         probe_labels: np.ndarray) -> float:
    """Fraction of probes whose nearest gallery face has the probe's identity (exact search)."""
    sims = probes @ gallery.T
    return float(np.mean(gallery_labels[np.argmax(sims, axis=1)] == probe_labels))


def synthetic_like(gen: FaceGenerator, gallery_labels: np.ndarray, probe_labels: np.ndarray, seed: int = 2):
    """A synthetic gallery and probe set with the same identity layout as a real one (for a shape check)."""
    rng = np.random.default_rng(seed)
    uniq, inv = np.unique(np.concatenate([gallery_labels, probe_labels]), return_inverse=True)
    c, sp = gen.identities(len(uniq), rng)
    g_inv, p_inv = inv[: len(gallery_labels)], inv[len(gallery_labels):]
    return gen.images(c[g_inv], sp[g_inv], rng), g_inv, gen.images(c[p_inv], sp[p_inv], rng), p_inv
