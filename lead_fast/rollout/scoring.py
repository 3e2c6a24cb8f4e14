"""Scoring sampled responses the way reasoning papers report it: pass@k from n samples, cons@n by majority
vote, lengths and truncation. Shared by the trainer's eval and the eval command (``lead_fast.eval``)."""

from __future__ import annotations

from dataclasses import dataclass

from lead_fast.algo import CORRECT, GradingRules, answers_equal, grade
from lead_fast.rollout.graded import rollout_and_grade


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` are correct: ``1 - C(n-c, k) / C(n, k)``.

    Computed as ``1 - prod_{i=n-c+1}^{n} (1 - k / i)``: no huge binomials, stable for n in the hundreds.
    """
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def majority_vote(answers: list[str | None], *, timeout_s: float = 5.0) -> str | None:
    """The most frequent answer, where answers math-verify finds equal are one vote (``1/2``, ``0.5`` and
    ``\\frac{1}{2}`` count together); ``None`` answers are ignored (all ``None``: ``None``). Ties go to the
    class whose first member came first. Returns that first member."""
    classes: list[list[int]] = []          # indices of answers, per equivalence class, in order of first member
    for i, a in enumerate(answers):
        if a is None:
            continue
        for members in classes:
            if answers_equal(answers[members[0]], a, timeout_s=timeout_s):
                members.append(i)
                break
        else:
            classes.append([i])
    if not classes:
        return None
    best = max(classes, key=lambda m: (len(m), -m[0]))
    return answers[best[0]]


def default_ks(n: int) -> list[int]:
    """1, 2, 4, ... up to n, and n itself."""
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    return ks + [n]


@dataclass
class ProblemResult:
    """One problem's samples, graded."""

    correct: int
    n: int
    vote_correct: bool
    lengths: list[int]
    correct_lengths: list[int]
    truncated: int


def score_problem(outcomes: list[int], answers: list[str | None], lengths: list[int], finish: list[str],
                  gold: str, *, timeout_s: float = 5.0) -> ProblemResult:
    """Counts for one problem: correct samples, whether the majority answer is right, lengths."""
    vote = majority_vote(answers, timeout_s=timeout_s)
    vote_ok = vote is not None and grade(f"\\boxed{{{vote}}}", gold, timeout_s=timeout_s) == CORRECT
    return ProblemResult(correct=sum(o == CORRECT for o in outcomes), n=len(outcomes), vote_correct=vote_ok,
                         lengths=list(lengths),
                         correct_lengths=[n for n, o in zip(lengths, outcomes) if o == CORRECT],
                         truncated=sum(f == "length" for f in finish))


def summarize(results: list[ProblemResult], ks: list[int]) -> dict:
    """pass@1 (mean over problems of c / n), pass@k, cons@n, lengths and truncation over ``results``."""
    if not results:
        return {"problems": 0}
    n = results[0].n
    lengths = [x for r in results for x in r.lengths]
    correct_lengths = [x for r in results for x in r.correct_lengths]
    out = {"problems": len(results), "samples_per_problem": n,
           "pass@1": sum(r.correct / r.n for r in results) / len(results)}
    for k in ks:
        if k > 1:
            out[f"pass@{k}"] = sum(pass_at_k(r.n, r.correct, k) for r in results) / len(results)
    out[f"cons@{n}"] = sum(r.vote_correct for r in results) / len(results)
    out["response_length/mean"] = sum(lengths) / len(lengths)
    out["response_length/correct_mean"] = (sum(correct_lengths) / len(correct_lengths)) if correct_lengths else None
    out["truncated_frac"] = sum(r.truncated for r in results) / len(lengths)
    return out


# --------------------------------------------------------------------------------------------------
# Generation and grading for a list of problems (the trainer's periodic eval uses this too)


def generate_and_score(engine, tokenizer, prompts: list[list[int]], golds: list[str], settings, rules: GradingRules,
                       *, num_workers: int | None = None,
                       score: bool = True) -> tuple[list[ProblemResult] | None, list[list[dict]]]:
    """Sample ``settings.n`` responses per prompt, grade them, score each problem (unless ``score`` is
    False: the eval command scores everything once, at the end, resumed problems included).

    Returns ``(results, samples)``; ``samples[i]`` lists problem ``i``'s samples as dicts (text, answer,
    outcome, length, finish reason)."""
    graded = rollout_and_grade(engine, tokenizer, prompts, golds, settings, rules, num_workers=num_workers,
                               progress=True)
    answers = [rules.answer(t) for t in graded.texts]
    samples = [dict(text=t, answer=a, outcome=o, length=len(c.token_ids), finish_reason=c.finish_reason)
               for t, a, o, c in zip(graded.texts, answers, graded.outcomes, graded.completions)]
    by_problem: list[list[dict]] = [[] for _ in prompts]
    for i, sample in zip(graded.group_ids.tolist(), samples):
        by_problem[i].append(sample)
    if not score:
        return None, by_problem
    results = [score_problem([x["outcome"] for x in rows], [x["answer"] for x in rows], [x["length"] for x in rows],
                             [x["finish_reason"] for x in rows], golds[p], timeout_s=rules.timeout_s)
               for p, rows in enumerate(by_problem)]
    return results, by_problem
