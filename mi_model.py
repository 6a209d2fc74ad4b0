"""The MINE model: one statistics network (one or several critics side by
side) scored on both halves of each row.

Each input row is (x, z, x_bar, z_bar): the joint half (x, z) is a draw from
the joint distribution P(X, Z), the marginal half (x_bar, z_bar) a draw from
the product of the marginals P(X)P(Z). The Donsker-Varadhan bound

    L = mean T(x, z) - log mean exp T(x_bar, z_bar)

is a lower bound on I(X; Z) in nats for every function T. Training maximizes
it by minimizing cost = -L, as the reference scripts do. Three estimators
(MINE paper, sections 3.1-3.2):

- mine_biased: the plain DV bound and its plain minibatch gradient, which
  is biased because log mean exp of a batch is a biased estimate;
- mine: the same bound, with the marginal term's gradient divided by a
  moving average of mean exp T instead of the batch's own value;
- mine_f: the f-divergence bound L_f = mean T(x, z) - mean exp(T(x_bar, z_bar) - 1).

The numerics are small pure functions of critic scores so that tests can
call them on plain tensors; beside them, the training record (History),
the plan it makes, the choice of each fold's critic and epoch, the
estimate's error bars, the held-out evaluation of the bound
(held_out_bounds, held_out_scores), the independence test's
permutations, sums and p-values (drawn_permutations to combined_p_value),
and MutualInformation, the bound as a Keras layer inside another model.

It imports mi_data_processing, never the reverse: the data module sits
lowest (it loads TensorFlow, reads and writes files, and owns the rows'
random streams), and the held-out pairings here draw from those streams
(epoch_key, critic_draws).
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import tensorflow as tf

from mi_data_processing import critic_draws, epoch_key
from mi_layers import StatisticsNetwork


def per_critic(values: tf.Tensor, mask: tf.Tensor | None) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """values as [critics, rows, entries], where each critic's entries are
    real (a boolean of that shape, from mask [critics, rows] with 1 for
    real rows and 0 for padding) and how many are real, [critics]."""
    values = tf.reshape(values, [tf.shape(values)[0], tf.shape(values)[1], -1])
    real = tf.ones_like(values, tf.bool) if mask is None else tf.broadcast_to(mask[:, :, None] > 0, tf.shape(values))
    return values, real, tf.reduce_sum(tf.cast(real, values.dtype), axis=[1, 2])


def critic_mean(values: tf.Tensor, mask: tf.Tensor | None = None) -> tf.Tensor:
    """The mean of each critic's values: [critics, rows, ...] -> [critics].

    `mask` [critics, rows] marks each critic's real rows with 1 and the
    padding that evens out its row count with 0.
    """
    values, real, count = per_critic(values, mask)
    return tf.reduce_sum(tf.where(real, values, 0.0), axis=[1, 2]) / count


def log_mean_exp(scores: tf.Tensor, mask: tf.Tensor | None = None) -> tf.Tensor:
    """log(mean(exp(scores))) of each critic, without overflow:
    [critics, rows, ...] -> [critics], padding masked out as in critic_mean.

    The plain formula overflows float32 once a score passes about 88;
    logsumexp subtracts the maximum first.
    """
    scores, real, count = per_critic(scores, mask)
    return tf.reduce_logsumexp(tf.where(real, scores, -np.inf), axis=[1, 2]) - tf.math.log(count)


def donsker_varadhan_bound(
    joint_scores: tf.Tensor, marginal_scores: tf.Tensor, mask: tf.Tensor | None = None
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Returns (bound, joint_part, marginal_part), each [critics], from
    scores [critics, rows, out_width].

    joint_part = mean T(joint), marginal_part = log mean exp T(marginal),
    bound = joint_part - marginal_part. With out_width > 1 every output unit
    counts as one more score, as in the reference.
    """
    joint_part = critic_mean(joint_scores, mask)
    marginal_part = log_mean_exp(marginal_scores, mask)
    return joint_part - marginal_part, joint_part, marginal_part


def f_divergence_bound(
    joint_scores: tf.Tensor, marginal_scores: tf.Tensor, mask: tf.Tensor | None = None
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Returns (bound, joint_part, marginal_part) of MINE-f, each [critics]:
    joint_part = mean T(joint), marginal_part = mean exp(T(marginal) - 1)."""
    joint_part = critic_mean(joint_scores, mask)
    marginal_part = critic_mean(tf.exp(marginal_scores - 1.0), mask)
    return joint_part - marginal_part, joint_part, marginal_part


def updated_log_moving_average(log_average: tf.Tensor, log_value: tf.Tensor, rate: float) -> tf.Tensor:
    """log of (1 - rate) * average + rate * value, from and to log space,
    element by element (one average per critic).

    A NaN log_average means no value yet: the first value starts it.
    """
    blended = tf.reduce_logsumexp(tf.stack([tf.math.log1p(-rate) + log_average, tf.math.log(rate) + log_value]), axis=0)
    return tf.where(tf.math.is_nan(log_average), log_value, blended)


def with_averaged_gradient(marginal_part: tf.Tensor, log_average: tf.Tensor) -> tf.Tensor:
    """marginal_part's value with the bias-corrected gradient of MINE (3.2).

    d/dθ log mean exp T = (d/dθ mean exp T) / mean exp T; MINE replaces the
    batch's mean exp T in that denominator by its moving average:
    exp(marginal_part - log_average) * d marginal_part. The value returned
    is marginal_part itself; only its gradient is rescaled.
    """
    return gradient_scaled(marginal_part, tf.stop_gradient(tf.exp(marginal_part - log_average)))


def gradient_scaled(values: tf.Tensor, factor: Any) -> tf.Tensor:
    """values, whose gradient is multiplied by `factor` on its way back (-1: gradient reversal, Ganin and
    Lempitsky 2015). The value is exactly `values`: the added term is values - values = 0."""
    constant = tf.stop_gradient(values)
    return constant + factor * (values - constant)


def cross_replica_bound(
    joint_scores: tf.Tensor,
    marginal_scores: tf.Tensor,
    estimator: str,
    sum_across: Callable[[tf.Tensor], tf.Tensor],
    max_across: Callable[[tf.Tensor], tf.Tensor],
    real_rows: tf.Tensor | None = None,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """The bound of a global batch split over replicas, from one replica's
    scores (one critic). `sum_across` and `max_across` reduce a scalar over
    replicas; real_rows marks padding rows with 0, as in critic_mean.

    log mean exp T does not decompose into an average of per-replica
    values, so the global log-sum-exp is formed exactly from the replicas'
    maxima and sums. Returns (bound, joint_part, marginal_part, joint_term,
    marginal_term): the first three are the global batch's, the same on
    every replica; the two terms carry this replica's share of the gradient:
    summed over replicas, d joint_term = d joint_part and d marginal_term =
    d marginal_part (d log sum exp T = sum exp(T - log sum exp T) dT).
    """
    real = (
        tf.ones_like(joint_scores, tf.bool)
        if real_rows is None
        else tf.broadcast_to(real_rows[:, :, None] > 0, tf.shape(joint_scores))
    )

    def real_sum(values):
        return tf.reduce_sum(tf.where(real, values, 0.0))

    count = sum_across(real_sum(tf.ones_like(joint_scores)))
    constant_joint, constant_marginal = tf.stop_gradient(joint_scores), tf.stop_gradient(marginal_scores)
    joint_part = sum_across(real_sum(constant_joint)) / count
    joint_term = real_sum(joint_scores) / count
    if estimator == "mine_f":
        marginal_part = sum_across(real_sum(tf.exp(constant_marginal - 1.0))) / count
        marginal_term = real_sum(tf.exp(marginal_scores - 1.0)) / count
    else:
        peak = max_across(tf.reduce_max(tf.where(real, constant_marginal, -np.inf)))
        log_sum_exp = peak + tf.math.log(sum_across(real_sum(tf.exp(constant_marginal - peak))))
        marginal_part = log_sum_exp - tf.math.log(count)
        marginal_term = real_sum(tf.exp(marginal_scores - log_sum_exp))
    return joint_part - marginal_part, joint_part, marginal_part, joint_term, marginal_term


def every_pair_parts(
    row_terms: np.ndarray, column_terms: np.ndarray, x_factors: np.ndarray, z_factors: np.ndarray
) -> tuple[float, float]:
    """The two parts of the Donsker-Varadhan bound (joint_part - marginal_part) of a critic whose scores are
    T(x_i, z_j) = row_terms[i] + column_terms[j] + x_factors[i] . z_factors[j] (mi_layers.copula_pair_terms) on
    n rows: mean T on the joint pairs (i, i), and log mean exp T over all n (n - 1) pairs i != j, block by block
    in float64."""
    n = len(row_terms)
    joint = float(np.mean(row_terms + column_terms + np.einsum("ik,ik->i", x_factors, z_factors)))
    block = max(1, 2**22 // n)
    log_sums = []
    for first in range(0, n, block):
        rows = slice(first, min(n, first + block))
        scores = row_terms[rows, None] + column_terms[None] + x_factors[rows] @ z_factors.T
        scores[np.arange(scores.shape[0]), np.arange(first, first + scores.shape[0])] = -np.inf  # joint pairs
        peak = scores.max()
        log_sums.append(peak + np.log(np.exp(scores - peak).sum()))
    peak = max(log_sums)
    return joint, peak + math.log(sum(math.exp(value - peak) for value in log_sums)) - math.log(n * (n - 1))


def split_halves(rows: tf.Tensor, sample_width: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Splits rows of 2 * sample_width columns (the last axis) into (joint, marginal)."""
    return rows[..., :sample_width], rows[..., sample_width:]


# The training record and what it says to do: the plan, the choice of each fold's critic, the estimate
@dataclasses.dataclass(frozen=True)
class History:
    """Each critic's figures per epoch, arrays [epochs, critics]: on its
    training rows the bound and its two parts (mean T on the joint half,
    log mean exp T on the marginal half), on its held-out rows the bound
    and the bounds on its halves A and B (NaN without held-out rows). The
    fields' order is that of figures() and of the checkpoint."""

    training: np.ndarray
    joint: np.ndarray
    marginal: np.ndarray
    held_out: np.ndarray
    held_out_a: np.ndarray
    held_out_b: np.ndarray

    WIDTH: ClassVar[int] = 6  # the fields

    @classmethod
    def of_figures(cls, figures: np.ndarray) -> History:
        """From figures [epochs, critics, WIDTH], in the fields' order."""
        return cls(*np.moveaxis(np.asarray(figures, dtype=np.float64), -1, 0))

    @classmethod
    def empty(cls, critics: int) -> History:
        return cls.of_figures(np.zeros((0, critics, cls.WIDTH)))

    def figures(self) -> np.ndarray:
        """[epochs, critics, WIDTH]: every field, in their order."""
        return np.stack([getattr(self, field.name) for field in dataclasses.fields(self)], axis=-1)

    def appended(self, training: np.ndarray, held_out: np.ndarray, critic_ids: list[int]) -> History:
        """With one more epoch of the critics critic_ids (NaN for the others,
        which did not train): training [critics, 3] (bound, joint part,
        marginal part) and held_out [critics, 2] (halves A, B)."""
        epoch = np.full((1, self.training.shape[1], self.WIDTH), np.nan)
        epoch[0, critic_ids] = np.column_stack([training, held_out.mean(axis=1), held_out])
        return History.of_figures(np.concatenate([self.figures(), epoch]))

    def first(self, epochs: int) -> History:
        """The history of the first `epochs` epochs."""
        return History(*(getattr(self, field.name)[:epochs] for field in dataclasses.fields(self)))

    def of_critics(self, first: int, stop: int) -> History:
        """Critics first, ..., stop - 1 alone."""
        return History(*(getattr(self, field.name)[:, first:stop] for field in dataclasses.fields(self)))

    def __len__(self) -> int:
        return len(self.training)


def decision_views(history: History, folds: int, per_fold: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(decision, reading) of each view, arrays [epochs, candidates]: a view
    chooses its (epoch, candidate) on its decision bounds and reads the
    estimate on rows that took no part in the choice. With folds, view k
    decides on the mean held-out bound of the other folds' critics and
    reads fold k's; with one split, view A decides on held-out half A and
    reads half B, view B the other way round. NaN where a critic did not
    train (a candidate dropped)."""
    if folds > 1:
        bounds = history.held_out.reshape(len(history), folds, per_fold)
        return [(np.delete(bounds, fold, axis=1).mean(axis=1), bounds[:, fold]) for fold in range(folds)]
    return [(history.held_out_a, history.held_out_b), (history.held_out_b, history.held_out_a)]


def behind_on_every_fold(
    history: History, folds: int, per_fold: int, view: int, candidate: int, leader: int, margin: float
) -> bool:
    """Whether each of the other folds' critics of `candidate` reached a
    best held-out bound more than `margin` below that of `leader` (K - 1
    folds agreeing: with 4, 1 chance in 16 if the two were alike, before
    the margin); never with one split, which has no other fold."""
    if folds == 1:
        return False
    bounds = np.delete(history.held_out.reshape(len(history), folds, per_fold), view, axis=1)
    best = np.nanmax(bounds, axis=0)  # [other folds, candidates]
    return bool(np.all(best[:, candidate] < best[:, leader] - margin))


@dataclasses.dataclass(frozen=True)
class Plan:
    """What the held-out bounds say to do after each epoch: which candidates
    each view may still choose, and so which critics still train, and the
    learning rate's course.

    From epoch `from_epoch` on, a view drops a candidate that is behind its
    leader (the candidate of its highest decision bound so far; beside
    trained candidates, the trained one: a fitted critic's reading never
    grows, a trained one's may pass it later) on every other fold by more
    than `margin` nats; a candidate stops training once every view has
    dropped it. The choice a view leaves is made on its
    decision rows alone, never on the rows it reads; candidates within the
    margin train to the end (why: tests/BENCHMARKS.md, "Why the code is as
    it is"). The learning rate is --lr times 0.5 (1 + cos(pi
    epoch / n_epoch)) (cosine), or --lr throughout (constant); the run has
    n_epoch epochs.
    """

    folds: int
    per_fold: int
    n_epoch: int
    schedule: str  # cosine or constant
    margin: float
    from_epoch: int
    allowed: tuple[frozenset[int], ...]  # per view: the candidates it may still choose
    epochs: int = 0  # epochs completed
    dropped: tuple[tuple[int, int], ...] = ()  # (candidate, the epoch after which it stopped training)
    apart: frozenset[int] = frozenset()  # candidates whose critics are fitted and read apart from the trained stack

    @classmethod
    def start(
        cls,
        folds: int,
        per_fold: int,
        n_epoch: int,
        schedule: str,
        margin: float,
        from_epoch: int,
        apart: frozenset[int] = frozenset(),
    ) -> Plan:
        views = folds if folds > 1 else 2
        allowed = (frozenset(range(per_fold)),) * views
        return cls(folds, per_fold, n_epoch, schedule, margin, from_epoch, allowed, apart=apart)

    @property
    def candidates(self) -> list[int]:
        """The candidates still in the running: those some view may choose."""
        return sorted(set().union(*self.allowed))

    @property
    def trained_candidates(self) -> list[int]:
        """The candidates still training, in the trained stack."""
        return [candidate for candidate in self.candidates if candidate not in self.apart]

    @property
    def critic_ids(self) -> list[int]:
        """The critics still training, fold-major: critic f * per_fold + c is fold f's candidate c."""
        return self.critics_of(self.trained_candidates)

    @property
    def apart_ids(self) -> list[int]:
        """The critics of the candidates read apart still in the running, fold-major."""
        return self.critics_of([candidate for candidate in self.candidates if candidate in self.apart])

    def critics_of(self, candidates: list[int]) -> list[int]:
        """The critics of these candidates, fold-major."""
        return [fold * self.per_fold + candidate for fold in range(self.folds) for candidate in candidates]

    def learning_rate_shares(self) -> tuple[float, float]:
        """The learning rate at the start and at the end of the next epoch, as shares of --lr."""
        if self.schedule == "constant":
            return 1.0, 1.0
        start, end = (
            0.5 * (1.0 + math.cos(math.pi * epoch / self.n_epoch)) for epoch in (self.epochs, self.epochs + 1)
        )
        return start, end

    def finished(self) -> bool:
        return self.epochs >= self.n_epoch

    def after(self, history: History) -> Plan:
        """The plan once the history's last epoch is done."""
        epochs, allowed = len(history), list(self.allowed)
        if epochs >= self.from_epoch and not np.isnan(history.held_out[-1]).all():
            for view, (decision, _) in enumerate(decision_views(history, self.folds, self.per_fold)):
                best = {candidate: float(np.nanmax(decision[:, candidate])) for candidate in allowed[view]}
                trained = [candidate for candidate in best if candidate not in self.apart] or list(best)
                leader = max(trained, key=lambda candidate: best[candidate])
                allowed[view] = frozenset(
                    candidate
                    for candidate in allowed[view]
                    if not behind_on_every_fold(
                        history, self.folds, self.per_fold, view, candidate, leader, self.margin
                    )
                )
        stopped = sorted(set(self.candidates) - set().union(*allowed))
        dropped = self.dropped + tuple((candidate, epochs) for candidate in stopped)
        return dataclasses.replace(self, allowed=tuple(allowed), epochs=epochs, dropped=dropped)


def chosen_in_views(history: History, plan: Plan) -> list[tuple[float, int, int]]:
    """Each view's (reading, epoch, candidate): the epoch (1-based) and
    candidate it allows with the highest decision bound, and its reading
    there."""
    chosen = []
    for (decision, reading), allowed in zip(
        decision_views(history, plan.folds, plan.per_fold), plan.allowed, strict=True
    ):
        choosable = np.full(decision.shape, -np.inf)
        columns = sorted(allowed)
        choosable[:, columns] = np.nan_to_num(decision[:, columns], nan=-np.inf)
        epoch, candidate = np.unravel_index(int(np.argmax(choosable)), choosable.shape)
        chosen.append((float(reading[epoch, candidate]), int(epoch) + 1, int(candidate)))
    return chosen


def held_out_stderr(joint_scores: np.ndarray, marginal_scores: np.ndarray, estimator: str = "mine") -> float:
    """The sampling standard error of a critic's bound on n held-out rows,
    by the delta method over the rows: joint_scores [n, outputs] are T on
    the rows, marginal_scores [passes, n, outputs] T on each row's marginal
    pairings. Row i moves the Donsker-Varadhan bound by its influence
    T_i - mean exp T'_i / mean exp T' (MINE-f's bound: T_i - mean
    exp(T'_i - 1)); the bound's variance is the influences' variance / n.
    Rows share z_bar through the pairings, which this neglects.
    """
    joint = np.asarray(joint_scores, np.float64).reshape(len(joint_scores), -1).mean(axis=1)
    marginal = np.asarray(marginal_scores, np.float64)
    marginal = marginal.reshape(marginal.shape[0], marginal.shape[1], -1)
    if estimator == "mine_f":
        influence = joint - np.exp(marginal - 1.0).mean(axis=(0, 2))
    else:
        weights = np.exp(marginal - marginal.max())
        influence = joint - weights.mean(axis=(0, 2)) / weights.mean()
    return float(influence.std(ddof=1) / np.sqrt(len(joint)))


def normal_interval(estimate: float, stderr: float) -> tuple[tuple[float, float], float]:
    """(95 % interval, 95 % lower confidence bound) of a normal estimate."""
    half_width = NORMAL_QUANTILES[0.975] * stderr
    return (estimate - half_width, estimate + half_width), estimate - NORMAL_QUANTILES[0.95] * stderr


# Quantiles of Student's t by probability and degrees of freedom.
T_QUANTILES = {
    0.975: {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228},
    0.95: {1: 6.314, 2: 2.920, 3: 2.353, 4: 2.132, 5: 2.015, 6: 1.943, 7: 1.895, 8: 1.860, 9: 1.833, 10: 1.812},
}
NORMAL_QUANTILES = {0.975: 1.959964, 0.95: 1.644854}


def t_quantile(probability: float, dof: int) -> float:
    """Student's t quantile: the table up to 10 degrees of freedom, then
    the normal quantile z with two Cornish-Fisher terms (Abramowitz and
    Stegun 26.7.5), within 0.005 of the exact value from 11 on."""
    if dof in T_QUANTILES[probability]:
        return T_QUANTILES[probability][dof]
    z = NORMAL_QUANTILES[probability]
    return z + (z**3 + z) / (4 * dof) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * dof**2)


def cross_fitted_interval(fold_estimates: list[float]) -> tuple[float, float, tuple[float, float], float]:
    """(mean, standard error, 95 % interval, 95 % lower confidence bound)
    of cross-fitted fold estimates.

    Each fold's estimate is read on rows its critic never trained on, so
    its spread around the mean holds both the evaluation noise of its rows
    and the variation between critics: the standard error of the mean is
    sd / sqrt(K), with Student's t for K - 1 degrees of freedom. The folds'
    training sets overlap, which makes their estimates slightly correlated
    and this standard error somewhat optimistic (Bengio & Grandvalet 2004).

    The interval measures that noise only, not the bound's gap below the
    MI, which no held-out figure can see. What the data do support is one
    side: every critic's bound is a lower bound on the MI, so the MI is at
    least mean - t(0.95) * stderr with 95 % confidence.
    """
    estimates = np.asarray(fold_estimates, dtype=np.float64)
    mean = float(estimates.mean())
    stderr = float(estimates.std(ddof=1) / np.sqrt(len(estimates)))
    half_width = t_quantile(0.975, len(estimates) - 1) * stderr
    return mean, stderr, (mean - half_width, mean + half_width), mean - t_quantile(0.95, len(estimates) - 1) * stderr


def views_at_their_best(history: History, plan: Plan) -> list[tuple[int, int]]:
    """The (view, candidate) pairs whose decision bound was at its highest yet, for the first time, at the
    history's last epoch: the (epoch, candidate) that view would choose, were it to choose that candidate
    (chosen_in_views takes the first of equal highs)."""
    last, best = len(history) - 1, []
    for view, (decision, _) in enumerate(decision_views(history, plan.folds, plan.per_fold)):
        for candidate in sorted(plan.allowed[view]):
            column = np.nan_to_num(decision[:, candidate], nan=-np.inf)
            if np.isfinite(column[last]) and int(np.argmax(column)) == last:
                best.append((view, candidate))
    return best


def read_by_view(plan: Plan, view: int, candidate: int) -> tuple[int, int | None]:
    """(the critic, its held-out half) a view reads for a candidate: with folds, fold `view`'s critic on both
    halves (None); with one split, the one critic on the half the view did not decide on."""
    return (view * plan.per_fold + candidate, None) if plan.folds > 1 else (candidate, 1 - view)


def chosen_estimate(
    history: History,
    candidate_names: list[str],
    plan: Plan,
    stderr_of: Callable[[list[int]], float] | None,
    reread: Callable[[list[tuple[int, int]]], list[float | None]] = lambda chosen: [None] * len(chosen),
) -> tuple[dict, list]:
    """The estimate as summary.json gives it: each view's reading at the
    (epoch, candidate) it chose (chosen_in_views), or where reread (of
    every view's (view, candidate)) gives one, that (the chosen critic read
    on many pairs): with folds their mean and its interval; with one split the mean of the
    two halves' readings, its error bar stderr_of(the chosen candidates).
    Without held-out rows (stderr_of None, one split), the training rows'
    bound at the last epoch. Returns (summary fields, the winning
    candidates for the final line)."""
    per_fold, folds = plan.per_fold, plan.folds
    chosen = "candidate and epoch" if per_fold > 1 else "epoch"
    fields: dict[str, Any] = {}
    if not len(history):
        fields = {"mi_estimate": None, "mi_estimate_from": "no completed epoch"}
        if folds > 1:
            fields |= {
                "mi_stderr": None,
                "mi_ci95": [None, None],
                "mi_lower_95": None,
                "fold_estimates": [None] * folds,
            }
        return fields | ({"fold_winners": [], "fold_best_epochs": []} if per_fold > 1 else {}), []
    if folds == 1 and stderr_of is None:  # no choice without held-out rows: one candidate (resolved() sees to it)
        return {
            "mi_estimate": float(history.training[-1, 0]),
            "mi_estimate_from": "training rows' bound, last epoch",
        }, []
    in_views = chosen_in_views(history, plan)
    again = reread([(view, candidate) for view, (_, _, candidate) in enumerate(in_views)])
    readings = [
        (reading if new is None else new, epoch, candidate)
        for (reading, epoch, candidate), new in zip(in_views, again, strict=True)
    ]
    if folds > 1:
        estimates = [reading for reading, _, _ in readings]
        mean, stderr, interval, lower = cross_fitted_interval(estimates)
        winners: list = [candidate_names[candidate] for _, _, candidate in readings]
        best_epochs: list = [epoch for _, epoch, _ in readings]
        source = f"mean of {folds} cross-fitted folds' held-out bounds, each at the {chosen} chosen on the other folds"
        fields = {"mi_estimate": mean, "mi_estimate_from": source, "mi_stderr": stderr}
        fields |= {"mi_ci95": list(interval), "mi_lower_95": lower, "fold_estimates": estimates}
    else:
        (read_b, epoch_a, chosen_a), (read_a, epoch_b, chosen_b) = readings
        estimate = 0.5 * (read_a + read_b)
        stderr = stderr_of(sorted({chosen_a, chosen_b})) if stderr_of else float("nan")
        interval, lower = normal_interval(estimate, stderr)
        winners, best_epochs = [[candidate_names[chosen_a], candidate_names[chosen_b]]], [[epoch_a, epoch_b]]
        source = f"held-out bound at the {chosen} chosen on the other half (epochs {epoch_a}, {epoch_b})"
        fields = {"mi_estimate": estimate, "mi_estimate_from": source, "mi_stderr": stderr}
        fields |= {"mi_ci95": list(interval), "mi_lower_95": lower}
    if per_fold > 1:
        fields |= {"fold_winners": winners, "fold_best_epochs": best_epochs}
    return fields, winners


def certified_limit(fields: dict[str, Any], pairs: list[int]) -> dict[str, Any]:
    """What the readings' marginal pairs let the estimate certify: no estimate from N pairs can certify much more
    than log N (McAllester and Stratos 2020), N the fewest pairs a reading took (pairs: each view's). Returns
    mi_certifiable (log N), mi_limit_binds (the 95 % interval, or the estimate, reaches it) and the 95 % lower
    bound, never above log N."""
    limit = math.log(min(pairs))
    top = fields["mi_ci95"][1] if fields.get("mi_ci95", [None, None])[1] is not None else fields["mi_estimate"]
    capped = {"mi_lower_95": min(fields["mi_lower_95"], limit)} if fields.get("mi_lower_95") is not None else {}
    return {"mi_certifiable": limit, "mi_limit_binds": bool(top >= limit)} | capped


def chosen_critics_stderr(
    model: MineModel,
    held_out_rows: list[np.ndarray],
    chosen: list[int],
    seed: int,
    passes: int,
    resample_latent_dim: int,
    estimator: str,
    critic_ids: list[int],
) -> float:
    """The standard error of a one-split estimate: held_out_stderr of the
    critics at positions `chosen` of the model's stack (their ids
    critic_ids), on every held-out row, at the last epoch's weights: the
    run keeps no earlier ones, and late epochs differ little as the
    learning rate decays."""
    rows = np.stack(held_out_rows)[:, None]  # [critics, one part, rows, columns]
    counts = tf.fill([len(rows), 1], rows.shape[2])
    ids, seed = tf.constant(critic_ids, tf.int32), tf.constant(seed, tf.int64)
    shifts = group_shifts(tf.reshape(counts, [-1]), seed, 0, passes, resample_latent_dim, ids, 1)
    index = tf.range(rows.shape[2])
    joint, marginal = held_out_scores(model, tf.constant(rows), counts, index, shifts, resample_latent_dim)
    joint, marginal = joint.numpy()[:, 0], marginal.numpy()[:, :, 0]
    return float(np.mean([held_out_stderr(joint[k], marginal[k], estimator) for k in chosen]))


# The independence test: each fold's critics score its rows re-paired by permutations they never depended on
def drawn_permutations(rows: int, permutations: int, seed: tuple[int, ...]) -> np.ndarray:
    """[permutations + 1, rows]: the identity, then `permutations` permutations of the rows drawn uniformly and
    independently (with replacement; Phipson and Smyth 2010 count the identity among them) from a generator of
    `seed` alone, never of the data."""
    generator = np.random.default_rng(seed)
    drawn = np.argsort(generator.random((permutations, rows)), axis=1)
    return np.concatenate([np.arange(rows)[None], drawn]).astype(np.int64)


# Scores enter a permutation's sum as integers of FIXED_POINT ths, clipped to SCORE_LIMIT: a sum of integers is
# exact in any order, so two permutations that make the same pairs (tied rows) make the same statistic, and a tie
# counts as an exceedance as it should, where float sums in another order could break it either way.
FIXED_POINT = 2.0**24
SCORE_LIMIT = 2.0**20  # with up to 2**16 rows a fold, the sums stay below 2**60


def permuted_sums(
    score_pairs: Callable[[np.ndarray, np.ndarray], np.ndarray],
    x: np.ndarray,
    z: np.ndarray,
    permutations: np.ndarray,
) -> np.ndarray:
    """[permutations] int64: sum over rows i of T(x_i, z_p(i)) of each permutation p (drawn_permutations), in
    units of 1 / FIXED_POINT. score_pairs(x rows, z rows) gives T of each pair. Each distinct (x, z) pair is
    scored once: the fold's whole x-z matrix where there are fewer rows than permutations, the permuted pairs
    where there are more; equal rows (ties) are one row, so equal pairs score alike."""
    x_values, x_codes = np.unique(x, axis=0, return_inverse=True)
    z_values, z_codes = np.unique(z, axis=0, return_inverse=True)
    pair_codes = x_codes.reshape(-1)[None] * len(z_values) + z_codes.reshape(-1)[permutations]
    if len(x_values) * len(z_values) <= pair_codes.size:  # the whole matrix: no more pairs than the pairings'
        needed, where = np.arange(len(x_values) * len(z_values)), pair_codes
    else:
        needed, where = np.unique(pair_codes, return_inverse=True)
    scores = np.asarray(score_pairs(x_values[needed // len(z_values)], z_values[needed % len(z_values)]))
    fixed = np.round(np.clip(scores.astype(np.float64), -SCORE_LIMIT, SCORE_LIMIT) * FIXED_POINT).astype(np.int64)
    return fixed[where.reshape(pair_codes.shape)].sum(axis=1)


def max_t(statistics: np.ndarray) -> np.ndarray:
    """[permutations]: the largest over checkpoints of each one's statistics [checkpoints, permutations], each
    standardized by its mean and standard deviation over all the permutations, the identity among them
    (Westfall and Young's max-T; a checkpoint whose statistics are all equal counts 0). Symmetric in the
    permutations, so it keeps their exchangeability."""
    statistics = np.asarray(statistics, np.float64)
    centered = statistics - statistics.mean(axis=1, keepdims=True)
    spread = centered.std(axis=1, keepdims=True)
    standardized = np.divide(centered, spread, out=np.zeros_like(centered), where=spread > 0)
    return standardized.max(axis=0)


def permutation_p_value(statistics: np.ndarray) -> float:
    """(1 + #{p >= 1: s_p >= s_0}) / (1 + permutations) of statistics [1 + permutations], s_0 the identity's: a
    tie counts as an exceedance. Valid at every level when the statistics are exchangeable under the null."""
    statistics = np.asarray(statistics)
    return float((1 + np.count_nonzero(statistics[1:] >= statistics[0])) / len(statistics))


def combined_p_value(fold_p_values: list[float]) -> float:
    """One p-value of K folds' (Bonferroni: K times the smallest, at most 1): valid however the folds' p-values
    depend on each other, as they do (a fold's critics trained on the other folds' rows; tests/BENCHMARKS.md,
    "The independence test")."""
    return min(1.0, float(f"{len(fold_p_values) * min(fold_p_values):.15g}"))  # 5 * 0.044 is 0.22, not 0.2199...


ESTIMATORS = ("mine", "mine_biased", "mine_f")


# Rows of each (critic, half) scored at once by the held-out reading: its memory, whatever the held-out rows
EVAL_ROWS = 2048


def held_out_samples(
    groups: tf.Tensor,
    counts: tf.Tensor,
    shifts: list[tf.Tensor],
    index: tf.Tensor,
    width: int,
    resample_latent_dim: int,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Rows `index` of each group [groups, most rows, columns] (counts[g]
    real rows first) as (joint samples [groups, n, width], marginal samples
    [pairings, groups, n, width]): in pairing p, each row's z_bar is that of
    row index + shifts[p][g] of its group, cyclically among its real rows;
    without resample_latent_dim, the file's own marginal half, one pairing."""
    rows = tf.gather(groups, index, axis=1)
    joint, marginal = rows[..., :width], rows[..., width:]
    if not resample_latent_dim:
        return joint, marginal[None]
    z_columns = groups[..., -resample_latent_dim:]
    z_bars = [
        tf.gather(z_columns, tf.math.floormod(index[None] + shift[:, None], counts[:, None]), batch_dims=1)
        for shift in shifts
    ]
    return joint, tf.stack([tf.concat([marginal[..., :-resample_latent_dim], z_bar], -1) for z_bar in z_bars])


def pairing_shifts(counts: tf.Tensor, seed: Any, epoch: Any, stream: int, group_ids: tf.Tensor) -> tf.Tensor:
    """Each group's cyclic shift s in [1, count - 1] for one marginal pairing: row i takes the z_bar of row
    i + s of its group, never its own; drawn for the group's id (critic_draws), stream by stream."""
    spans = tf.maximum(counts - 1, 1)
    key = epoch_key(seed, epoch, stream)
    uniform = tf.map_fn(lambda group: critic_draws(key, group, 1)[0], group_ids, fn_output_signature=tf.float32)
    return tf.minimum(1 + tf.cast(uniform * tf.cast(spans, tf.float32), tf.int32), spans)


def group_shifts(
    counts: tf.Tensor,
    seed: Any,
    epoch: Any,
    passes: int,
    resample_latent_dim: int,
    critic_ids: tf.Tensor,
    parts: int,
) -> list[tf.Tensor]:
    """The pairings' shifts of each (critic, part) group, one list entry per pairing (streams 1, 2, ...: apart
    from the training order's stream 0); none without resample_latent_dim."""
    if not resample_latent_dim:
        return []
    group_ids = tf.reshape(tf.cast(critic_ids, tf.int32)[:, None] * parts + tf.range(parts)[None], [-1])
    return [pairing_shifts(counts, seed, epoch, stream, group_ids) for stream in range(1, passes + 1)]


def held_out_scores(
    model: MineModel,
    rows: tf.Tensor,
    counts: tf.Tensor,
    index: tf.Tensor,
    shifts: list[tf.Tensor],
    resample_latent_dim: int,
) -> tuple[tf.Tensor, tf.Tensor]:
    """T on rows `index` of each critic's held-out parts, rows [critics,
    parts, most rows, columns] and counts [critics, parts] real rows first:
    on the joint samples [critics, parts, n, outputs] and on each pairing's
    marginal samples [critics, pairings, parts, n, outputs] (held_out_samples
    with the groups' shifts). One pass of the network scores every joint
    sample, and one every marginal sample."""
    critics, parts, most_rows, columns = rows.shape
    width, n = model.sample_width, index.shape[0]
    groups = tf.reshape(rows, [critics * parts, most_rows, columns])  # one group per (critic, part)
    joint, marginal = held_out_samples(groups, tf.reshape(counts, [-1]), shifts, index, width, resample_latent_dim)
    passes = marginal.shape[0]
    joint_scores = model.statistics_network(tf.reshape(joint, [critics, parts * n, width]))
    marginal = tf.transpose(tf.reshape(marginal, [passes, critics, parts, n, width]), [1, 0, 2, 3, 4])
    marginal_scores = model.statistics_network(tf.reshape(marginal, [critics, passes * parts * n, width]))
    return (
        tf.reshape(joint_scores, [critics, parts, n, -1]),
        tf.reshape(marginal_scores, [critics, passes, parts, n, -1]),
    )


def merged_parts(
    first: tuple[tf.Tensor, tf.Tensor, tf.Tensor], second: tuple[tf.Tensor, tf.Tensor, tf.Tensor], estimator: str
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """(count, joint_part, marginal_part) of the union of two disjoint sets
    of scores, from each one's (a set of no score counts 0): joint parts are
    means, marginal parts log mean exp (mine_f: means), so a bound can be
    read slice by slice."""
    (count_a, joint_a, marginal_a), (count_b, joint_b, marginal_b) = first, second
    count = count_a + count_b
    share_b = tf.math.divide_no_nan(count_b, count)
    share_a = 1.0 - share_b

    def mean(a, b):
        return tf.where(count_b > 0, tf.where(count_a > 0, share_a * a + share_b * b, b), a)

    if estimator == "mine_f":
        return count, mean(joint_a, joint_b), mean(marginal_a, marginal_b)
    log_shares = tf.math.log(tf.stack([share_a, share_b]))
    log_mean = tf.reduce_logsumexp(tf.stack([marginal_a, marginal_b]) + log_shares, axis=0)
    return count, mean(joint_a, joint_b), tf.where(count_b > 0, tf.where(count_a > 0, log_mean, marginal_b), marginal_a)


def held_out_bounds(
    model: MineModel,
    halves: tuple[tf.Tensor, tf.Tensor],
    seed: tf.Tensor | int,
    epoch: tf.Tensor | int,
    passes: int,
    resample_latent_dim: int,
    critic_ids: tf.Tensor,
) -> tf.Tensor:
    """Each critic's bound on each of its held-out parts, [critics, parts],
    averaged over `passes` marginal pairings: halves is (rows, counts) as
    stacked_halves makes them; the critics' ids critic_ids fix their
    pairings (group_shifts)."""
    _, parts = halves[1].shape
    shifts = group_shifts(tf.reshape(halves[1], [-1]), seed, epoch, passes, resample_latent_dim, critic_ids, parts)
    joint_part, marginal_part = parts_in_pairings(model, halves, shifts, resample_latent_dim)
    return tf.reduce_mean(joint_part - marginal_part, axis=1)


def pooled_bound(joint_part: tf.Tensor, marginal_part: tf.Tensor, estimator: str) -> tf.Tensor:
    """The bound over every pairing's pairs at once, [critics, parts], from the parts of each pairing [critics,
    pairings, parts] of as many pairs each (parts_in_pairings): their marginal parts merged (log mean exp of
    log mean exps; with mine_f, a mean of means), not their bounds averaged."""
    pairings = tf.cast(tf.shape(marginal_part)[1], marginal_part.dtype)
    if estimator == "mine_f":
        return tf.reduce_mean(joint_part - marginal_part, axis=1)
    return tf.reduce_mean(joint_part, axis=1) - (tf.reduce_logsumexp(marginal_part, axis=1) - tf.math.log(pairings))


def parts_in_pairings(
    model: MineModel, halves: tuple[tf.Tensor, tf.Tensor], shifts: list[tf.Tensor], resample_latent_dim: int
) -> tuple[tf.Tensor, tf.Tensor]:
    """(joint_part, marginal_part) of each critic's bound on each of its held-out parts in each pairing
    (held_out_samples: shifts[p] [critics * parts] is pairing p's), each [critics, pairings, parts]. Read
    EVAL_ROWS rows of every part at a time (one graph loop, its parts merged by merged_parts), so that the
    memory it takes does not grow with the held-out rows."""
    rows, counts = halves
    critics, parts, most_rows, _ = rows.shape
    group_counts = tf.reshape(counts, [-1])
    size = min(most_rows, EVAL_ROWS)
    groups = critics * parts * max(1, len(shifts))

    def read_slice(start, total):
        position = start + tf.range(size)
        index = tf.minimum(position, most_rows - 1)
        joint_scores, marginal_scores = held_out_scores(model, rows, counts, index, shifts, resample_latent_dim)
        pairings = marginal_scores.shape[1]  # a group per (critic, pairing, part), as the scores come
        real = tf.reshape(tf.cast(position[None] < group_counts[:, None], tf.float32), [critics, 1, parts, size])
        mask = tf.reshape(tf.tile(real, [1, pairings, 1, 1]), [groups, size])
        joint_scores = tf.tile(joint_scores[:, None], [1, pairings, 1, 1, 1])
        _, joint_part, marginal_part = model.bound(
            tf.reshape(joint_scores, [groups, size, -1]), tf.reshape(marginal_scores, [groups, size, -1]), mask
        )
        return start + size, merged_parts(total, (tf.reduce_sum(mask, 1), joint_part, marginal_part), model.estimator)

    empty = (tf.zeros([groups]), tf.zeros([groups]), tf.zeros([groups]))
    _, (_, joint_part, marginal_part) = tf.while_loop(
        lambda start, _: start < most_rows, read_slice, (tf.constant(0), empty)
    )
    return tf.reshape(joint_part, [critics, -1, parts]), tf.reshape(marginal_part, [critics, -1, parts])


@tf.keras.utils.register_keras_serializable(package="mine")
class MineModel(tf.keras.Model):
    """Maps each critic's batch of rows, [critics, rows, 2 * sample_width],
    to (cost, joint_part, marginal_part), each [critics].

    cost is minus the estimator's bound in value; with estimator "mine" and
    training=True its gradient is the bias-corrected one. The critics share
    nothing but the graph: their sum of costs has, for each critic's
    weights, the gradient that critic's cost alone would have.
    """

    def __init__(
        self,
        data_dim=10,
        latent_dim=1,
        hid_width=128,
        out_width=1,
        estimator="mine",
        ema_rate=0.01,
        activation="tanh",
        critics=1,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
        self.data_dim = data_dim
        self.latent_dim = latent_dim
        self.sample_width = data_dim + latent_dim
        self.estimator = estimator
        self.ema_rate = ema_rate
        self.critics = critics
        self.statistics_network = StatisticsNetwork(hid_width, out_width, activation, critics, seed)
        self.statistics_network.build((critics, None, self.sample_width))
        # Every replica computes the same global value, so the first one's is kept.
        self.log_moving_average = self.add_weight(
            shape=(critics,),
            initializer=tf.keras.initializers.Constant(float("nan")),
            trainable=False,
            aggregation="only_first_replica",
            name="log_moving_average",
        )

    def get_config(self):
        return {
            "name": self.name,
            "data_dim": self.data_dim,
            "latent_dim": self.latent_dim,
            "hid_width": self.statistics_network.hid_width,
            "out_width": self.statistics_network.out_width,
            "activation": self.statistics_network.activation,
            "estimator": self.estimator,
            "ema_rate": self.ema_rate,
            "critics": self.critics,
            "seed": self.statistics_network.seed,
        }

    def bound(self, joint_scores, marginal_scores, mask=None):
        """(bound, joint_part, marginal_part) of this model's estimator, each [critics]."""
        bound_of = f_divergence_bound if self.estimator == "mine_f" else donsker_varadhan_bound
        return bound_of(joint_scores, marginal_scores, mask)

    def call(self, rows, real_rows=None, training=False):
        """real_rows: None, or [critics, rows] with 0 for padding rows that
        the bound leaves out (the last batch of an epoch)."""
        joint, marginal = split_halves(rows, self.sample_width)
        # One pass over both halves: a matrix product twice as tall is
        # cheaper than two, and the weights are shared anyway.
        scores = self.statistics_network(tf.concat([joint, marginal], axis=1))
        joint_scores, marginal_scores = tf.split(scores, 2, axis=1)
        replica_context = tf.distribute.get_replica_context()
        if replica_context is not None and replica_context.num_replicas_in_sync > 1:
            return self.cross_replica_cost(joint_scores, marginal_scores, real_rows, replica_context, training)
        bound, joint_part, marginal_part = self.bound(joint_scores, marginal_scores, real_rows)
        if self.estimator == "mine" and training:
            self.log_moving_average.assign(
                updated_log_moving_average(self.log_moving_average, tf.stop_gradient(marginal_part), self.ema_rate)
            )
            return (
                with_averaged_gradient(marginal_part, self.log_moving_average) - joint_part,
                joint_part,
                marginal_part,
            )
        return -bound, joint_part, marginal_part

    def critic(self, k):
        """Critic k alone, as a one-critic model with a copy of its weights."""
        config = self.get_config()
        activation = config["activation"] if isinstance(config["activation"], str) else config["activation"][k]
        config.update(critics=1, name=f"critic_{k + 1}", activation=activation)
        single = MineModel(**config)
        single(tf.zeros([1, 1, 2 * self.sample_width]))  # built, as saving expects
        single.statistics_network.set_weights(self.statistics_network.critic_weights(k))
        single.log_moving_average.assign(self.log_moving_average[k : k + 1])
        return single

    def cross_replica_cost(self, joint_scores, marginal_scores, real_rows, replica_context, training):
        """(cost, joint_part, marginal_part) of the global batch on one
        replica: cost is minus the global bound in value, and its gradient
        is this replica's share of the global gradient, which the optimizer
        sums over replicas."""

        def sum_across(value):
            return replica_context.all_reduce(tf.distribute.ReduceOp.SUM, value)

        def max_across(value):  # ReduceOp has no MAX: gather the maxima
            return tf.reduce_max(replica_context.all_gather(tf.reshape(value, [1]), axis=0))

        bound, joint_part, marginal_part, joint_term, marginal_term = cross_replica_bound(
            joint_scores, marginal_scores, self.estimator, sum_across, max_across, real_rows
        )
        marginal_scale = 1.0
        if self.estimator == "mine" and training:
            self.log_moving_average.assign(
                updated_log_moving_average(self.log_moving_average, tf.reshape(marginal_part, [1]), self.ema_rate)
            )
            marginal_scale = tf.exp(marginal_part - self.log_moving_average)  # as in with_averaged_gradient
        surrogate = marginal_scale * marginal_term - joint_term
        cost = -bound + surrogate - tf.stop_gradient(surrogate)
        return tf.reshape(cost, [1]), tf.reshape(joint_part, [1]), tf.reshape(marginal_part, [1])


# MINE inside a Keras model: the bound of each batch as a loss term or a metric of another model's training
LAYER_MODES = ("maximize", "minimize", "monitor")


def re_paired(values: tf.Tensor, shift: tf.Tensor) -> tf.Tensor:
    """The batch's rows moved `shift` rows along, cyclically: with 0 < shift < rows, row i meets another row's
    values, every row's once."""
    return tf.roll(values, shift, axis=0)


@tf.keras.utils.register_keras_serializable(package="mine")
class MutualInformation(tf.keras.layers.Layer):
    """The MINE bound of I(A; B) on each batch, inside another model: `MutualInformation(mode)([a, b])` returns
    `a` unchanged and trains its own critic (a one-critic MineModel: a StatisticsNetwork and the moving average
    of --estimator mine) to climb the bound on the batch's pairs (a_i, b_i) against re-paired ones
    (a_i, b_(i-s)), the shift s drawn each step from 1 .. rows - 1, cyclically.

    mode "maximize" adds -weight * bound to the model's losses: the layers before climb the bound with the
    critic (InfoMax). "minimize" adds +weight * bound: the critic climbs, the layers before descend, on one
    step in critic_steps (with critic_steps * weight then; 1: on every step, by gradient reversal). Alternating
    is the default because it stays near zero where reversal drifts back up (tests/BENCHMARKS.md, "The Keras
    layer"). "monitor" adds 0: only the critic trains; nothing flows back to a or b. In every mode the metric
    named after the layer shows the batch bound in nats: a bound on training rows, not an estimate of I.

    Under a tf.distribute strategy each replica re-pairs its own rows; the bound is the global batch's, its
    log-mean-exp formed exactly across replicas as with mi_main --strategy mirrored.
    """

    def __init__(
        self,
        mode="maximize",
        weight=1.0,
        hid_width=64,
        activation="tanh",
        estimator="mine",
        ema_rate=0.01,
        critic_steps=5,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if mode not in LAYER_MODES:
            raise ValueError(f"mode must be one of {LAYER_MODES}, got {mode!r}")
        if not (isinstance(critic_steps, int) and critic_steps >= 1):
            raise ValueError(f"critic_steps must be a whole number, 1 or more; got {critic_steps!r}")
        self.mode = mode
        self.weight = weight
        self.hid_width = hid_width
        self.activation = activation
        self.estimator = estimator
        self.ema_rate = ema_rate
        self.critic_steps = critic_steps
        self.seed = seed
        self.bound_metric = tf.keras.metrics.Mean(name=self.name)

    # Keras (3.15) keeps a layer's added losses in one list, which a MirroredStrategy's replicas, traced each in
    # its own thread, clear and fill in turn: a replica then reads another's loss beside or instead of its own.
    # Each thread keeps its own list here.
    @property
    def _losses(self):
        per_thread = self.__dict__.setdefault("_losses_per_thread", threading.local())
        if not hasattr(per_thread, "values"):
            per_thread.values = []
        return per_thread.values

    @_losses.setter
    def _losses(self, values):
        self._losses[:] = values

    def build(self, input_shape):
        a_shape, b_shape = input_shape
        self.mine = MineModel(
            math.prod(a_shape[1:]),
            math.prod(b_shape[1:]),
            self.hid_width,
            1,
            self.estimator,
            self.ema_rate,
            self.activation,
            critics=1,
            seed=self.seed,
        )
        # Steps trained, the same on every replica: it draws the re-pairing's shift and takes minimize's turns.
        self.steps = self.add_weight(
            shape=(),
            initializer="zeros",
            dtype="int64",
            trainable=False,
            aggregation="only_first_replica",
            name="steps",
        )

    @property
    def statistics_network(self) -> StatisticsNetwork:
        return self.mine.statistics_network

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def call(self, inputs, training=False):
        a, b = inputs
        rows = tf.shape(a)[0]
        a_values, b_values = tf.reshape(a, [rows, -1]), tf.reshape(b, [rows, -1])
        if self.mode == "monitor":
            a_values, b_values = tf.stop_gradient(a_values), tf.stop_gradient(b_values)
        else:
            factor = self.weight if self.mode == "maximize" else self.descent_factor()
            a_values, b_values = gradient_scaled(a_values, factor), gradient_scaled(b_values, factor)
        seed = tf.stack([tf.constant(self.seed or 0, tf.int64), tf.convert_to_tensor(self.steps)])
        shift = tf.random.stateless_uniform([], seed, 1, tf.maximum(rows, 2), tf.int32)
        samples = [a_values, b_values, a_values, re_paired(b_values, shift)]
        cost, joint_part, marginal_part = self.mine(tf.concat(samples, axis=1)[None], training=training)
        bound = joint_part[0] - marginal_part[0]
        # Keras divides a replica's added loss by the replicas and sums their gradients; each replica's cost
        # already carries its share of the global batch's gradient.
        replicas = tf.distribute.get_replica_context()
        critic_term = gradient_scaled(cost[0], 1 if replicas is None else replicas.num_replicas_in_sync)
        shown = {"maximize": -self.weight, "minimize": self.weight, "monitor": 0.0}[self.mode] * bound
        self.add_loss(tf.stop_gradient(shown) + critic_term - tf.stop_gradient(critic_term))
        self.bound_metric.update_state(bound)
        if training:
            self.steps.assign_add(1)
        return a

    def descent_factor(self) -> tf.Tensor:
        """minimize: the factor of the bound's gradient on the layers before, -weight * critic_steps on their
        turn (one step in critic_steps) and 0 on the others, so that weight is the mean pressure whatever
        critic_steps."""
        their_turn = tf.equal(self.steps % self.critic_steps, self.critic_steps - 1)
        return tf.where(their_turn, -self.weight * self.critic_steps, 0.0)

    def get_config(self):
        return {
            **super().get_config(),
            "mode": self.mode,
            "weight": self.weight,
            "hid_width": self.hid_width,
            "activation": self.activation,
            "estimator": self.estimator,
            "ema_rate": self.ema_rate,
            "critic_steps": self.critic_steps,
            "seed": self.seed,
        }
