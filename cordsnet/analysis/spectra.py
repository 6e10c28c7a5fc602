"""Spectra of linear operators: recurrent convolutions and the linearised dynamics (docs/specification.md §6).

* :func:`conv_to_matrix` applies an operator to every basis vector of its input (in batches): the
  dense matrix, for exact eigenvalues of small layers.
* :func:`arnoldi` / :func:`arnoldi_eigenvalues`: Arnoldi iteration with full re-orthogonalisation
  (classical Gram-Schmidt against every previous vector, repeated when the DGKS criterion detects
  cancellation, ``||w_new|| < ||w_old|| / sqrt(2)``: "twice is enough"), then the eigenvalues of the small
  Hessenberg matrix by LAPACK's ``geev`` (``numpy.linalg.eig``). The published analysis ran a long
  series of *unshifted* QR iterations on the Hessenberg matrix before reading its diagonal; unshifted
  QR converges only linearly, at the ratio of neighbouring moduli, and never splits eigenvalues of
  equal modulus (complex-conjugate pairs stay 2x2 blocks), so it is an approximation whose quality
  depends on the iteration count. ``geev`` balances the matrix and runs the implicitly shifted
  (Francis double-shift) Hessenberg QR algorithm: backward stable, quadratically convergent, and for
  a few hundred Krylov vectors it takes milliseconds. It also yields the eigenvectors of the
  Hessenberg matrix, hence the standard Ritz residual estimate ``|h_{m+1,m}| |y_m|`` of every
  returned eigenvalue, which says which ones have converged.
* :func:`top_eigenvector`: batched power iteration (many random starts in parallel, normalised at
  every iteration, sign-aligned and averaged at the end). It converges only when the dominant
  eigenvalue is real and separated from the next by a spectral gap (``|l2| / |l1| < 1``, error
  ~ ``(|l2|/|l1|)^t``); with a complex-conjugate dominant pair it does not converge and says so.
* :func:`recurrent_spectrum`, :func:`dynamics_spectrum`, :func:`spectral_radius`: the spectra of a
  model's recurrent convolutions ``area_conv[i]`` and of the Jacobian of its Euler step at the
  spontaneous state, computed with Jacobian-vector products (never a dense Jacobian).

Operators are ``nn.Conv2d`` modules (their effective weight ``module.weight`` is used, so
weight-normalised convolutions work; a bias is ignored: the spectrum is that of the linear part) or
callables mapping (N, *shape) tensors to (N, *shape) tensors. An affine callable is accepted too:
its constant ``f(0)`` is subtracted. Callables receive tensors of the requested `dtype` (float64 by
default) on the requested `device`.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple, Sequence, Union

import numpy as np
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import Tensor, nn

from .. import validate

__all__ = [
    "DEFAULT_KRYLOV_DIM",
    "EIGEN_METHODS",
    "SPECTRUM_TARGETS",
    "PowerIterationResult",
    "Spectrum",
    "arnoldi",
    "arnoldi_eigenvalues",
    "conv_to_matrix",
    "dynamics_operator",
    "dynamics_spectrum",
    "recurrent_spectrum",
    "spectral_radius",
    "top_eigenvector",
]

_DGKS = 1 / math.sqrt(2)  # Daniel-Gragg-Kaufman-Stewart criterion for a second Gram-Schmidt pass
DEFAULT_KRYLOV_DIM = 300  # "a few hundred Krylov vectors" (docs/specification.md §6), capped by the dimension
Operator = Union[nn.Module, Callable[[Tensor], Tensor]]
_MatVec = Callable[[Tensor], Tensor]  # (b, n) -> (b, n), flat rows


# ------------------------------------------------------------------------------------- results
@dataclass(frozen=True)
class Spectrum:
    """Leading eigenvalues of a linear operator, from :func:`arnoldi`.

    Attributes:
        eigenvalues: (k,) complex128, by decreasing modulus (conjugate pairs: positive imaginary part
            first).
        residuals: (k,) Ritz residual estimates ``||A x - l x||`` of unit Ritz vectors x; an
            eigenvalue has converged when its residual is small compared with the radius.
        dimension: n, the operator's dimension.
        krylov_dim: m, Krylov vectors used (m = n makes the result exact up to rounding).
        name: what the operator is (e.g. ``area_conv.3``, ``dynamics``).
        seconds: wall time of the computation.
        vectors: (k, *shape) complex128 Ritz vectors when requested, else None.
        info: extra diagnostics (e.g. the fixed-point residual of the dynamics).
    """

    eigenvalues: np.ndarray
    residuals: np.ndarray
    dimension: int
    krylov_dim: int
    name: str = "operator"
    seconds: float = 0.0
    vectors: np.ndarray | None = field(default=None, repr=False)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def radius(self) -> float:
        """Spectral radius estimate: the largest modulus found."""
        return float(np.abs(self.eigenvalues).max()) if self.eigenvalues.size else 0.0

    def converged(self, rtol: float = 1e-6) -> np.ndarray:
        """(k,) bool: residual <= rtol * radius (an absolute 1e-300 floor for the zero operator)."""
        return self.residuals <= rtol * max(self.radius, 1e-300)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (eigenvalues as [real, imag] pairs)."""
        return {
            "name": self.name,
            "dimension": self.dimension,
            "krylov_dim": self.krylov_dim,
            "radius": self.radius,
            "eigenvalues": [[float(z.real), float(z.imag)] for z in self.eigenvalues],
            "residuals": [float(r) for r in self.residuals],
            "seconds": self.seconds,
            **{k: v for k, v in self.info.items()},
        }


class PowerIterationResult(NamedTuple):
    """``(vector, eigenvalue, residual, iterations, agreement)`` from :func:`top_eigenvector`.

    Attributes:
        vector: (*shape) unit eigenvector estimate (float tensor, the operator's dtype).
        eigenvalue: Rayleigh quotient ``v . A v``.
        residual: ``||A v - eigenvalue v||``.
        iterations: iterations run.
        agreement: min over starts of ``|<x_i, v>|``: 1 when every start found the same direction.
    """

    vector: Tensor
    eigenvalue: float
    residual: float
    iterations: int
    agreement: float

    def __repr__(self) -> str:
        return (f"PowerIterationResult(eigenvalue={self.eigenvalue:.6g}, residual={self.residual:.3g}, "
                f"iterations={self.iterations}, agreement={self.agreement:.4f})")


# ----------------------------------------------------------------------------- operator helpers
def _check_shape(shape: Sequence[int] | int) -> tuple[int, ...]:
    items = (shape,) if validate.is_int(shape) else shape
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence) or not items:
        raise ValueError(f"shape: expected a non-empty tuple of positive ints such as (c, H, W), got {shape!r}")
    return tuple(validate.positive_int(f"shape[{i}]", s) for i, s in enumerate(items))


def _operator_device(operator: Operator, device: torch.device | str | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    if isinstance(operator, nn.Conv2d):
        return operator.weight.device
    return torch.device("cpu")


def _tensor_fn(operator: Operator, dtype: torch.dtype, device: torch.device) -> Callable[[Tensor], Tensor]:
    """A function on (N, *shape) tensors computing the operator's linear part."""
    if isinstance(operator, nn.Conv2d):
        with torch.no_grad():
            weight = operator.weight.detach().to(device=device, dtype=dtype)  # effective (weight-norm) weight

        if operator.padding_mode != "zeros":
            raise ValueError(f"operator: expected a convolution with zero padding, got padding_mode "
                             f"{operator.padding_mode!r}")

        def conv(x: Tensor) -> Tensor:  # the module's stride / padding / dilation / groups, no bias
            return F.conv2d(x, weight, None, operator.stride, operator.padding, operator.dilation, operator.groups)

        return conv
    if isinstance(operator, nn.Module) or callable(operator):
        return operator
    raise TypeError(f"operator: expected an nn.Conv2d or a callable on (N, c, H, W) tensors, "
                    f"got {type(operator).__name__}")


def _flat_matvec(operator: Operator, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device,
                 *, square: bool = True) -> tuple[_MatVec, int]:
    """Wrap an operator as (b, n_in) -> (b, n_out) on flat rows; returns (matvec, n_out)."""
    fn = _tensor_fn(operator, dtype, device)
    n = math.prod(shape)
    with torch.no_grad():
        zero = torch.zeros((1, *shape), dtype=dtype, device=device)
        try:
            offset = fn(zero)
        except Exception as exc:  # noqa: BLE001 - report which input shape the operator refused
            raise ValueError(f"operator: cannot be applied to a {tuple(zero.shape)} {dtype} tensor on {device} "
                             f"({type(exc).__name__}: {exc})") from exc
    if not isinstance(offset, Tensor):
        raise TypeError(f"operator: expected it to return a tensor, got {type(offset).__name__}")
    if square and tuple(offset.shape) != (1, *shape):
        raise ValueError(f"operator: eigenvalues need a square operator mapping (1, {', '.join(map(str, shape))}) "
                         f"to the same shape, got output shape {tuple(offset.shape)}")
    if offset.shape[0] != 1:
        raise ValueError(f"operator: expected a batch of 1 in, 1 out, got output shape {tuple(offset.shape)}")
    offset = offset.detach().reshape(1, -1).to(dtype)
    affine = not isinstance(operator, nn.Conv2d) and bool(offset.abs().max() > 0)
    n_out = offset.shape[1]

    def matvec(x: Tensor) -> Tensor:
        with torch.no_grad():
            y = fn(x.reshape(x.shape[0], *shape)).reshape(x.shape[0], n_out).to(dtype)
        return y - offset if affine else y

    return matvec, (n if square else n_out)


_DTYPES = (torch.float32, torch.float64)


# ------------------------------------------------------------------------------- dense matrix
def conv_to_matrix(conv: Operator, input_shape: Sequence[int], *, batch_size: int = 256,
                   dtype: torch.dtype = torch.float64, device: torch.device | str | None = None,
                   max_bytes: int = 2 << 30) -> np.ndarray:
    """The dense matrix of a convolution (or any linear operator) on a (c, H, W) input.

    Column j is the operator applied to the j-th basis vector of the flattened input (C order), so
    ``matrix @ x.ravel() == conv(x).ravel()``. Basis vectors go through the operator `batch_size` at
    a time.

    Args:
        conv: an ``nn.Conv2d`` (effective weight, bias ignored) or a callable on (N, *input_shape)
            tensors (an affine callable has its constant ``f(0)`` removed).
        input_shape: (c, H, W) of one input, without the batch dimension.
        batch_size: basis vectors per call.
        dtype: computation dtype (float64 by default, for exact small spectra).
        device: where to compute; default: the module's device, else CPU.
        max_bytes: refuse matrices larger than this (use :func:`arnoldi` instead).

    Returns:
        (n_out, n_in) float64 numpy array, n_in = c * H * W.
    """
    shape = _check_shape(input_shape)
    validate.positive_int("batch_size", batch_size)
    dtype = validate.choice("dtype", dtype, _DTYPES)
    dev = _operator_device(conv, device)
    matvec, n_out = _flat_matvec(conv, shape, dtype, dev, square=False)
    n_in = math.prod(shape)
    if n_in * n_out * 8 > max_bytes:
        raise ValueError(f"input_shape: the dense matrix of a {shape} input would be {n_out}x{n_in} "
                         f"({n_in * n_out * 8 / 2**30:.1f} GiB > max_bytes); use arnoldi() for large operators")
    out = np.empty((n_out, n_in), dtype=np.float64)
    for start in range(0, n_in, batch_size):
        stop = min(start + batch_size, n_in)
        basis = torch.zeros((stop - start, n_in), dtype=dtype, device=dev)
        basis[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
        out[:, start:stop] = matvec(basis).double().cpu().numpy().T
    return out


# ------------------------------------------------------------------------------------- Arnoldi
def _arnoldi_matvec(matvec: _MatVec, n: int, k: int, *, krylov_dim: int | None, seed: int,
                    dtype: torch.dtype, device: torch.device, return_vectors: bool,
                    shape: tuple[int, ...], name: str, v0: Tensor | None = None) -> Spectrum:
    """Arnoldi on a flat matvec; see :func:`arnoldi`."""
    t0 = time.perf_counter()
    validate.positive_int("k", k)
    if k > n:
        raise ValueError(f"k: expected at most the operator's dimension {n}, got {k}")
    m = min(DEFAULT_KRYLOV_DIM if krylov_dim is None else validate.positive_int("krylov_dim", krylov_dim), n)
    if m < k:
        raise ValueError(f"krylov_dim: expected at least k={k} Krylov vectors, got {m}")
    gen = torch.Generator(device="cpu").manual_seed(int(seed))

    def random_vector() -> Tensor:
        return torch.randn(n, generator=gen, dtype=dtype).to(device)

    basis = torch.empty((m, n), dtype=dtype, device=device)
    hess = np.zeros((m + 1, m), dtype=np.float64)
    q = random_vector() if v0 is None else v0.reshape(-1).to(device=device, dtype=dtype).clone()
    if q.numel() != n:
        raise ValueError(f"v0: expected {n} elements, got {q.numel()}")
    qn = q.norm()
    if not qn > 0:
        raise ValueError("v0: expected a non-zero start vector")
    basis[0] = q / qn
    scale = 0.0  # largest ||A q_j|| seen: the reference for detecting an invariant subspace
    eps = torch.finfo(dtype).eps
    for j in range(m):
        w = matvec(basis[j:j + 1])[0]
        if not bool(torch.isfinite(w).all()):
            raise ValueError(f"operator: produced non-finite values at Krylov step {j}")
        norm0 = float(w.norm())
        scale = max(scale, norm0)
        prev = basis[: j + 1]
        h = torch.mv(prev, w)
        w = w.addmv(prev.t(), h, alpha=-1.0)
        beta = float(w.norm())
        if beta < _DGKS * norm0:  # cancellation: a second Gram-Schmidt pass restores orthogonality
            h2 = torch.mv(prev, w)
            w = w.addmv(prev.t(), h2, alpha=-1.0)
            h = h + h2
            beta = float(w.norm())
        hess[: j + 1, j] = h.double().cpu().numpy()
        if j + 1 < m and beta <= 10 * n * eps * max(scale, 1e-300):
            # Invariant subspace: continue with a fresh direction orthogonal to the basis (the
            # Hessenberg matrix becomes block triangular, its spectrum the union of both blocks).
            hess[j + 1, j] = 0.0
            r = random_vector()
            for _ in range(2):
                r = r.addmv(basis[: j + 1].t(), torch.mv(basis[: j + 1], r), alpha=-1.0)
            basis[j + 1] = r / r.norm()
        else:
            hess[j + 1, j] = beta
            if j + 1 < m:
                basis[j + 1] = w / beta
    small = hess[:m, :m]
    evals, evecs = np.linalg.eig(small)  # LAPACK geev: balancing + shifted Hessenberg QR
    residuals = abs(hess[m, m - 1]) * np.abs(evecs[m - 1, :])
    modulus = np.round(np.abs(evals), 12)
    order = np.lexsort((-evals.imag, -modulus))[:k]
    vectors = None
    if return_vectors:
        y = torch.from_numpy(evecs[:, order]).to(device)
        qm = basis[:m].to(torch.float64)
        ritz = (qm.t().to(torch.complex128) @ y).t()  # (k, n)
        vectors = ritz.reshape(k, *shape).cpu().numpy()
    return Spectrum(eigenvalues=evals[order].astype(np.complex128), residuals=residuals[order],
                    dimension=n, krylov_dim=m, name=name, seconds=time.perf_counter() - t0,
                    vectors=vectors, info={"method": "arnoldi"})


def _arpack_matvec(matvec: _MatVec, n: int, k: int, *, krylov_dim: int | None, seed: int,
                   dtype: torch.dtype, device: torch.device, return_vectors: bool,
                   shape: tuple[int, ...], name: str) -> Spectrum:
    """Implicitly restarted Arnoldi (ARPACK, through ``scipy.sparse.linalg.eigs``); see :func:`arnoldi`.

    Restarts keep the Krylov space small (`krylov_dim` = ARPACK's ``ncv``, default
    ``max(2k + 1, 100)``) and iterate until the k eigenvalues of largest modulus have converged
    (tolerance: machine precision), at the price of more operator applications. Residuals are
    computed exactly, ``||A x - l x||`` for each unit eigenvector.
    """
    try:
        from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigs
    except ImportError:  # scipy comes with scikit-learn, a dependency; guard anyway
        raise ValueError("method: 'arpack' needs scipy (pip install scipy)") from None
    t0 = time.perf_counter()
    validate.positive_int("k", k)
    if k >= n - 1:
        raise ValueError(f"k: method 'arpack' needs k < n - 1 = {n - 1}, got {k}; use method='arnoldi'")
    ncv = min(n, max(2 * k + 1, 100 if krylov_dim is None else validate.positive_int("krylov_dim", krylov_dim)))
    calls = 0

    def apply(v: np.ndarray) -> np.ndarray:
        nonlocal calls
        calls += 1
        x = torch.from_numpy(np.ascontiguousarray(np.real(v), dtype=np.float64).reshape(1, n)).to(device, dtype)
        return matvec(x)[0].to(torch.float64).cpu().numpy()

    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    v0 = torch.randn(n, generator=gen, dtype=torch.float64).numpy()
    op = LinearOperator((n, n), matvec=apply, dtype=np.float64)
    try:
        evals, evecs = eigs(op, k=k, which="LM", ncv=ncv, v0=v0)
    except ArpackNoConvergence as exc:
        warnings.warn(f"arnoldi: ARPACK converged {len(exc.eigenvalues)} of {k} eigenvalues; returning those",
                      RuntimeWarning, stacklevel=3)
        evals, evecs = exc.eigenvalues, exc.eigenvectors
    modulus = np.round(np.abs(evals), 12)
    order = np.lexsort((-evals.imag, -modulus))
    evals, evecs = evals[order], evecs[:, order]
    vecs = torch.from_numpy(evecs)
    parts = torch.cat([vecs.real.t(), vecs.imag.t()]).to(device, dtype)  # (2k, n)
    images = matvec(parts).to(torch.float64).cpu()
    av = torch.complex(images[: len(evals)], images[len(evals):])
    residuals = (av - torch.from_numpy(evals)[:, None] * vecs.t()).abs().pow(2).sum(dim=1).sqrt().numpy()
    vectors = vecs.t().reshape(len(evals), *shape).numpy() if return_vectors else None
    return Spectrum(eigenvalues=evals.astype(np.complex128), residuals=residuals, dimension=n, krylov_dim=ncv,
                    name=name, seconds=time.perf_counter() - t0, vectors=vectors,
                    info={"method": "arpack", "matvecs": calls + 1})


# Eigen-solvers on a flat matvec: "arnoldi" (this module's, the published method) or "arpack".
EIGEN_METHODS: dict[str, Callable[..., Spectrum]] = {"arnoldi": _arnoldi_matvec, "arpack": _arpack_matvec}


def _method(method: str) -> Callable[..., Spectrum]:
    if method not in EIGEN_METHODS:
        raise ValueError(f"method: expected one of {sorted(EIGEN_METHODS)}, got {method!r}")
    return EIGEN_METHODS[method]


def arnoldi(operator: Operator, shape: Sequence[int], k: int = 20, *, krylov_dim: int | None = None,
            seed: int = 0, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None,
            return_vectors: bool = False, name: str = "operator", method: str = "arnoldi") -> Spectrum:
    """The `k` eigenvalues of largest modulus of a linear operator, by the Arnoldi iteration.

    Builds an orthonormal Krylov basis ``q_0, A q_0, ...`` of `krylov_dim` vectors (each new vector
    Gram-Schmidt-orthogonalised against all previous ones, a second time when cancellation is
    detected), so that ``A Q_m = Q_m H_m + ...``
    with ``H_m`` upper Hessenberg, and returns the eigenvalues of ``H_m`` (Ritz values) of largest
    modulus. Extremal eigenvalues that stand out from the bulk converge first; the residual
    estimates tell which have. With ``krylov_dim >= n`` the result is exact up to rounding.

    Args:
        operator: an ``nn.Conv2d`` (effective weight; for weight-normalised modules ``module.weight``)
            or a callable on (N, *shape) tensors (called with N = 1).
        shape: (c, H, W) of one input, without the batch dimension.
        k: eigenvalues to return.
        krylov_dim: Krylov vectors (default 300), capped by the dimension c * H * W. Memory:
            ``(krylov_dim + 1) * n`` numbers of `dtype`.
        seed: seed of the random start vector.
        dtype: float64 (default) or float32 (half the memory traffic, about 1e-6 relative accuracy).
        device: where to compute; default: the module's device, else CPU.
        return_vectors: also return the Ritz vectors, (k, *shape) complex.
        name: label stored in the result.
        method: "arnoldi" (default: one Krylov space of `krylov_dim` vectors, as the published
            analysis) or "arpack" (implicitly restarted Arnoldi from scipy: iterates until the k
            eigenvalues have converged, with `krylov_dim` vectors per restart cycle; use it when
            the residuals of "arnoldi" are too large, e.g. spectra without outliers).

    Returns:
        A :class:`Spectrum` (eigenvalues, residual estimates, ...).
    """
    solver = _method(method)
    shape = _check_shape(shape)
    dtype = validate.choice("dtype", dtype, _DTYPES)
    dev = _operator_device(operator, device)
    matvec, n = _flat_matvec(operator, shape, dtype, dev)
    return solver(matvec, n, k, krylov_dim=krylov_dim, seed=seed, dtype=dtype, device=dev,
                  return_vectors=return_vectors, shape=shape, name=name)


def arnoldi_eigenvalues(operator: Operator, shape: Sequence[int], k: int = 20, **kwargs: Any) -> np.ndarray:
    """The `k` eigenvalues of largest modulus, (k,) complex128: ``arnoldi(...).eigenvalues``.

    Keyword arguments are those of :func:`arnoldi`.
    """
    return arnoldi(operator, shape, k, **kwargs).eigenvalues


# ------------------------------------------------------------------------------ power iteration
def top_eigenvector(operator: Operator, shape: Sequence[int], *, starts: int = 32, iterations: int = 1000,
                    tol: float = 1e-10, seed: int = 0, dtype: torch.dtype = torch.float64,
                    device: torch.device | str | None = None) -> PowerIterationResult:
    """The dominant eigenvector by batched power iteration.

    `starts` random vectors are iterated together (one batched operator call per iteration), each
    normalised after every application. Iteration stops when no start changes by more than `tol`
    (up to sign: a negative dominant eigenvalue flips the sign every iteration) or after
    `iterations`. The starts are then sign-aligned with the first and averaged.

    Converges only with a spectral gap: the dominant eigenvalue must be real and strictly larger in
    modulus than all others; the error shrinks like ``(|l_2| / |l_1|)^t``. Without a gap (a
    complex-conjugate dominant pair, or ``|l_2| = |l_1|``) the starts do not agree: a warning is
    raised and ``agreement`` / ``residual`` in the result show it.

    Args:
        operator: an ``nn.Conv2d`` or a callable on (N, *shape) tensors; it is called with
            N = `starts`.
        shape: (c, H, W) of one input.
        starts: random starts iterated in parallel.
        iterations: maximum iterations.
        tol: convergence threshold on the per-iteration change of the unit vectors.
        seed: seed of the random starts.
        dtype: float64 (default) or float32.
        device: where to compute; default: the module's device, else CPU.

    Returns:
        A :class:`PowerIterationResult` (vector of shape `shape`, eigenvalue, residual, iterations,
        agreement).
    """
    shape = _check_shape(shape)
    dtype = validate.choice("dtype", dtype, _DTYPES)
    validate.positive_int("starts", starts)
    validate.positive_int("iterations", iterations)
    validate.number("tol", tol, low=0.0, low_open=True)
    dev = _operator_device(operator, device)
    matvec, n = _flat_matvec(operator, shape, dtype, dev)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    x = torch.randn((starts, n), generator=gen, dtype=dtype).to(dev)
    x = x / x.norm(dim=1, keepdim=True)
    done = 0
    for done in range(1, iterations + 1):
        y = matvec(x)
        norms = y.norm(dim=1, keepdim=True)
        if not bool((norms > 0).all()) or not bool(torch.isfinite(norms).all()):
            raise ValueError("operator: a power-iteration start was mapped to zero or to non-finite values")
        y = y / norms
        change = torch.minimum((y - x).norm(dim=1), (y + x).norm(dim=1)).max()
        x = y
        if float(change) < tol:
            break
    signs = torch.sign(x @ x[0])
    signs[signs == 0] = 1.0
    v = (signs[:, None] * x).mean(dim=0)
    v = v / v.norm()
    av = matvec(v[None])[0]
    eigenvalue = float(v @ av)
    residual = float((av - eigenvalue * v).norm())
    agreement = float((x @ v).abs().min())
    if agreement < 1 - 1e-6 or residual > 1e-4 * max(abs(eigenvalue), 1e-300):
        warnings.warn(f"top_eigenvector: power iteration did not converge after {done} iterations "
                      f"(agreement {agreement:.4f}, residual {residual:.3g}); the dominant eigenvalue may lack "
                      "a spectral gap (complex pair or equal moduli)", RuntimeWarning, stacklevel=2)
    return PowerIterationResult(v.reshape(shape), eigenvalue, residual, done, agreement)


# ------------------------------------------------------------------------------------- models
def _check_model(model: Any) -> Any:
    from ..model import CordsNet

    if not isinstance(model, CordsNet):
        raise TypeError(f"model: expected a CordsNet, got {type(model).__name__}")
    return model


def _check_area(model: Any, area: Any) -> int:
    return validate.integer("area", area, min=0, max=model.depth - 1,
                            why=f"or use one of {sorted(SPECTRUM_TARGETS)} for the whole dynamics")


def recurrent_spectrum(model: Any, area: int, k: int = 20, **kwargs: Any) -> Spectrum:
    """Leading eigenvalues of the recurrent convolution ``model.area_conv[area]`` on (c_i, H_i, W_i).

    Keyword arguments are those of :func:`arnoldi` (krylov_dim, seed, dtype, device, return_vectors).
    """
    model = _check_model(model)
    area = _check_area(model, area)
    shape = model.config.state_shapes[area]
    kwargs.setdefault("name", f"area_conv.{area}")
    return arnoldi(model.area_conv[area], shape, k, **kwargs)


def dynamics_operator(model: Any, *, state: Sequence[Tensor] | None = None, alpha: float | None = None,
                      spontaneous_steps: int | None = None, dtype: torch.dtype = torch.float64
                      ) -> tuple[Callable[[Tensor], Tensor], int, dict[str, Any]]:
    """The Jacobian of one Euler step (blank drive) at a state, as a matrix-free operator.

    The step map is ``F(r)_i = (1 - alpha) r_i + alpha * relu(pre_i(r))`` for every area jointly,
    so ``J = (1 - alpha) I + alpha * D * dpre/dr``, with D the diagonal of the update
    nonlinearity's derivative (relu: 1 for active units, 0 otherwise, with relu'(0) = 0) and
    ``dpre/dr`` holding the recurrent convolutions on the diagonal blocks and the feedforward
    pathways (through the relu of the lower areas) below it. ``J v`` is a Jacobian-vector product
    (forward-mode autodiff, dual tensors, through :meth:`CordsNet.step`); the dense J is never formed.

    Args:
        model: a CordsNet.
        state: the linearisation point, one (1, c_i, H_i, W_i) tensor per area; default: the
            spontaneous state ``model.spontaneous_state(1, steps=spontaneous_steps, alpha=alpha)``.
        alpha: dt / tau; default: the config's.
        spontaneous_steps: blank steps of the default state; default: the config's.
        dtype: computation dtype (a float64 copy of the model by default).

    Returns:
        ``(operator, n, info)``: operator maps (N, n) flat joint states (areas concatenated in order,
        each C-order) to (N, n); n is the total state dimension; info has
        ``fixed_point_residual`` = ``||F(r) - r|| / ||r||`` at the state (0 at a true fixed point).
    """
    model = _check_model(model)
    dtype = validate.choice("dtype", dtype, _DTYPES)
    alpha = model.resolve_protocol(alpha=alpha).alpha
    ref = next(model.parameters())
    net = model if ref.dtype == dtype else copy.deepcopy(model).to(dtype)
    net.eval()
    if state is None:
        state = net.spontaneous_state(1, steps=spontaneous_steps, alpha=alpha)
    else:
        state = tuple(s.detach().to(device=ref.device, dtype=dtype) for s in model.validate_state(state))
        if state[0].shape[0] != 1:
            raise ValueError(f"state: expected a batch of 1, got {state[0].shape[0]}")
    shapes = net.config.state_shapes
    sizes = [math.prod(s) for s in shapes]
    n = sum(sizes)
    point = torch.cat([s.reshape(1, -1) for s in state], dim=1)

    def step_parts(parts: Sequence[Tensor]) -> tuple[Tensor, ...]:
        return net.step(tuple(parts), None, alpha)

    def flat(parts: Sequence[Tensor]) -> Tensor:
        return torch.cat([r.reshape(r.shape[0], -1) for r in parts], dim=1)

    with torch.no_grad():
        moved = flat(step_parts(state))
        residual = float((moved - point).norm() / point.norm().clamp_min(1e-300))

    def jvp(tangents: Tensor) -> Tensor:
        b = tangents.shape[0]
        pieces = torch.split(tangents.reshape(b, n).to(dtype), sizes, dim=1)
        # Forward-mode AD with dual tensors (much faster here than torch.func.jvp); under no_grad the
        # model reuses its cached effective weights, and forward-mode AD is unaffected by no_grad.
        with torch.no_grad(), fwAD.dual_level():
            duals = tuple(fwAD.make_dual(s.expand(b, *s.shape[1:]).contiguous() if b > 1 else s,
                                         p.reshape(b, *shape))
                          for s, p, shape in zip(state, pieces, shapes))
            out = [fwAD.unpack_dual(r).tangent for r in step_parts(duals)]
        return flat(out)

    return jvp, n, {"fixed_point_residual": residual, "alpha": alpha}


def dynamics_spectrum(model: Any, k: int = 20, *, state: Sequence[Tensor] | None = None,
                      alpha: float | None = None, spontaneous_steps: int | None = None,
                      krylov_dim: int | None = None, seed: int = 0, dtype: torch.dtype = torch.float64,
                      return_vectors: bool = False, method: str = "arnoldi") -> Spectrum:
    """Leading eigenvalues of the Jacobian of the Euler step at the spontaneous state.

    The spontaneous state is locally stable (perturbations of the blank-image dynamics decay) when
    the spectral radius of this discrete-time Jacobian is below 1. Each eigenvalue l of the step's
    Jacobian corresponds to ``(l - 1) / (alpha * tau)`` of the continuous-time system; ``info``
    holds the largest real part of ``(l - 1) / alpha`` among those found (negative = the
    continuous-time linearisation decays too) and the fixed-point residual of the state.

    Args: see :func:`dynamics_operator` and :func:`arnoldi`. Vectors, when requested, are flat
    (k, n) joint states.
    """
    solver = _method(method)
    op, n, info = dynamics_operator(model, state=state, alpha=alpha, spontaneous_steps=spontaneous_steps,
                                    dtype=dtype)
    device = next(model.parameters()).device
    spec = solver(op, n, k, krylov_dim=krylov_dim, seed=seed, dtype=dtype, device=device,
                  return_vectors=return_vectors, shape=(n,), name="dynamics")
    info = {**spec.info, **info}
    info["max_continuous_real_part"] = float(((spec.eigenvalues - 1.0) / info["alpha"]).real.max())
    info["stable"] = bool(spec.radius < 1.0)
    return Spectrum(spec.eigenvalues, spec.residuals, spec.dimension, spec.krylov_dim, spec.name,
                    spec.seconds, spec.vectors, info)


# What `spectral_radius` / the CLI accept besides area indices.
SPECTRUM_TARGETS: dict[str, Callable[..., Spectrum]] = {"dynamics": dynamics_spectrum}


def spectral_radius(model: Any, area: int | str = "dynamics", *, k: int = 2, **kwargs: Any) -> float:
    """Spectral radius of a recurrent convolution (``area`` = index) or of the dynamics ("dynamics").

    For the dynamics this is the radius of the Jacobian of the Euler step at the spontaneous state:
    below 1 means the spontaneous state is locally stable. For a recurrent convolution ``W_i`` it
    is the radius of ``W_i`` alone (the linear recurrence ``r <- W r + ...`` of the inverse
    initialisation converges when it is below 1).

    Keyword arguments go to :func:`recurrent_spectrum` / :func:`dynamics_spectrum`.
    """
    model = _check_model(model)
    if isinstance(area, str):
        validate.choice("area", area, SPECTRUM_TARGETS)
        return SPECTRUM_TARGETS[area](model, k, **kwargs).radius
    return recurrent_spectrum(model, area, k, **kwargs).radius
