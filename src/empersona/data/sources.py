"""Every public file the study reads, pinned: upstream repository, commit, path, sha256, licence.

Four upstreams (see ``../shared/data/README.md`` for the mirror layout):

- the paper's evaluation files, ``aisa-group/EM-persona-consistency`` at ``ddf3ed1a...``
  (Weckauff, Zhang, Andriushchenko, arXiv:2604.28082);
- Betley et al. 2025, ``emergent-misalignment/emergent-misalignment`` at ``80c11967...``: the
  classic EM question files and the insecure/secure code training sets (MIT);
- Turner et al. 2025, ``clarifying-EM/model-organisms-for-EM``: medical, financial and
  extreme-sports training sets. Upstream keeps them in a password-protected archive so that
  scrapers cannot collect them; they are marked ``locked`` and come from a local file or a
  mirror, never from a download;
- Betley, Bao et al. 2025, "Tell me about yourself" (MIT): the language self-report question file
  whose rule set the self-assessment language format uses. No commit of it is pinned, so it comes
  from a local copy or a mirror, checked against its sha256 like every other file.

A sha256 is always that of the *uncompressed* file: the mirror may hold a gzipped copy
(``compressed_in_mirror``); the cache always holds the plain file.

The secure.jsonl hash is not checked against a copy here (the mirror has none); it is the
value that several independent projects pin for ``data/secure.jsonl`` at the commit above. A
wrong pin fails loudly at fetch time, naming both hashes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

SourceKind = Literal["evaluation", "training"]

PAPER_REPO = "aisa-group/EM-persona-consistency"
PAPER_COMMIT = "ddf3ed1adc1f9233861146551723dd8126c76ccc"
PAPER_LICENSE = "research/academic use; cite arXiv:2604.28082"

BETLEY_REPO = "emergent-misalignment/emergent-misalignment"
BETLEY_COMMIT = "80c11967c07a328e7d7d43d13ce6847ae44dbcc9"

TMAY_REPO = "XuchanBao/behavioral-self-awareness"  # Betley, Bao et al. 2025, "Tell me about yourself"
TMAY_PATH = "questions/non_mms/risk_safe_language.yaml"

TURNER_REPO = "clarifying-EM/model-organisms-for-EM"
TURNER_ARCHIVE = "em_organism_dir/data/training_datasets.zip.enc"
TURNER_LICENSE = "upstream terms; no public copies (kept from scrapers)"


@dataclass(frozen=True)
class Source:
    """One pinned public file.

    ``mirror_path`` is relative to a mirror folder laid out like ``../shared/data``;
    ``url`` is ``None`` where no plain file can be downloaded (``locked``), and then
    ``how_to_obtain`` says what to do instead.
    """

    name: str
    description: str
    kind: SourceKind
    license: str
    repo: str
    commit: str | None
    upstream_path: str
    url: str | None
    sha256: str
    mirror_path: str
    compressed_in_mirror: bool
    locked: bool
    how_to_obtain: str | None

    @property
    def filename(self) -> str:
        """The file's name in the cache (always uncompressed)."""
        base = self.mirror_path.rsplit("/", 1)[-1]
        return base.removesuffix(".gz")


def raw_github_url(repo: str, commit: str, path: str) -> str:
    """The raw.githubusercontent.com address of ``path`` in ``repo`` at ``commit``."""
    return f"https://raw.githubusercontent.com/{repo}/{commit}/{path}"


def _pinned(
    name: str,
    description: str,
    kind: SourceKind,
    license: str,
    repo: str,
    commit: str,
    upstream_path: str,
    sha256: str,
    mirror_path: str,
) -> Source:
    """A plain file downloadable from ``repo`` at ``commit``."""
    return Source(
        name=name,
        description=description,
        kind=kind,
        license=license,
        repo=repo,
        commit=commit,
        upstream_path=upstream_path,
        url=raw_github_url(repo, commit, upstream_path),
        sha256=sha256,
        mirror_path=mirror_path,
        compressed_in_mirror=mirror_path.endswith(".gz"),
        locked=False,
        how_to_obtain=None,
    )


def _paper(name: str, description: str, upstream_path: str, sha256: str) -> Source:
    mirror_path = "paper/" + upstream_path.rsplit("/", 1)[-1]
    return _pinned(
        name, description, "evaluation", PAPER_LICENSE, PAPER_REPO, PAPER_COMMIT,
        upstream_path, sha256, mirror_path,
    )


def _betley(
    name: str, description: str, kind: SourceKind, upstream_path: str, sha256: str, mirror_path: str
) -> Source:
    return _pinned(
        name, description, kind, "MIT", BETLEY_REPO, BETLEY_COMMIT, upstream_path, sha256,
        mirror_path,
    )


def _turner_how_to(filename: str, name: str) -> str:
    return (
        f"Turner et al. distribute {filename} only inside the password-protected archive "
        f"{TURNER_ARCHIVE} of https://github.com/{TURNER_REPO}, to keep it away from web "
        "scrapers. Clone that repository and unlock the archive as its README describes "
        "(`easy-dataset-share unprotect-dir` with the passphrase given there); the files "
        "appear in training_datasets.zip.enc.extracted/. Then run "
        f"`empersona data fetch {name} --path <that folder>/{filename}`, or place the file "
        f"(plain or gzipped) at training/{filename}[.gz] in a mirror folder. Keep the "
        "decrypted file out of anything public."
    )


def _turner(name: str, description: str, sha256: str) -> Source:
    filename = f"{name}.jsonl"
    return Source(
        name=name,
        description=description,
        kind="training",
        license=TURNER_LICENSE,
        repo=TURNER_REPO,
        commit=None,
        upstream_path=f"{TURNER_ARCHIVE} -> {filename}",
        url=None,
        sha256=sha256,
        mirror_path=f"training/{filename}.gz",
        compressed_in_mirror=True,
        locked=True,
        how_to_obtain=_turner_how_to(filename, name),
    )


def _tmay_language() -> Source:
    """The "Tell me about yourself" language-rule questions: public (MIT), but no download of
    them is pinned here (no commit of the upstream repository was at hand to pin), so they come
    from a local copy or a mirror and are checked against this sha256."""
    return Source(
        name="tmay_language_rules",
        description="Betley, Bao et al. rule-set preamble and questions of the language self-report (self-assessment language format)",
        kind="evaluation",
        license="MIT",
        repo=TMAY_REPO,
        commit=None,
        upstream_path=TMAY_PATH,
        url=None,
        sha256="13a70883a72389a191a37186ec2d1ddf931afb1928accc599e50b5389aebe532",
        mirror_path="tmay-questions/risk_safe_language.yaml",
        compressed_in_mirror=False,
        locked=False,
        how_to_obtain=(
            f"No download of it is pinned here: take {TMAY_PATH} from the code release of Betley, Bao et al. "
            f"2025, 'Tell me about yourself' (https://github.com/{TMAY_REPO}, MIT) and run "
            "`empersona data fetch tmay_language_rules --path FILE`, or place it at "
            "tmay-questions/risk_safe_language.yaml in a mirror folder; or give self_assessment "
            "language_preamble=ours (our own wording, not the protocol's)"
        ),
    )


_ALL: tuple[Source, ...] = (
    _paper(
        "harm_prompts",
        "350 harm prompts, one per line (paper section 3.1)",
        "harmfulness_and_self_assessment_evaluation/data/harm_eval_questions.txt",
        "53b430e5d78f519fce7ff33cf773ca0580ca9a607d5fe6af93dac83f0d3a0b52",
    ),
    _paper(
        "self_assessment_prompts",
        "decision-format self-assessment prompts, one per line",
        "harmfulness_and_self_assessment_evaluation/data/self_assessment_questions.txt",
        "91a1414c5d081c9a9394240f7be8e4769cc0f08855cffbea23c2d4e183ed8961",
    ),
    _paper(
        "harm_judge_rubric",
        "harm judge rubric, 1-5, {prompt}/{response} placeholders",
        "harmfulness_and_self_assessment_evaluation/judge_prompt.txt",
        "762b48bef141234ddd3c460be8bd1ae61c0a4627c8d54bbd468ff4e348e1c452",
    ),
    _paper(
        "two_ai_items",
        "150 paired aligned/misaligned AI descriptions (two-AI identification)",
        "self_report_experiments/data/two_AI_identification_dataset.json",
        "aa3d74197fcb71bc87f2e39762e9b010d3ec4d07d02f04a2ccb36ade50f3e93f",
    ),
    _betley(
        "em_first_plot",
        "Betley et al. first-plot EM questions with aligned/coherent judge prompts",
        "evaluation",
        "evaluation/first_plot_questions.yaml",
        "215abde5b02811e922b6ac563ff33c490e0dff9ab58439df840f3135e9387173",
        "em-questions/first_plot_questions.yaml",
    ),
    _betley(
        "em_preregistered",
        "Betley et al. 48 pre-registered EM questions",
        "evaluation",
        "evaluation/preregistered_evals.yaml",
        "8648312fd9fe71a63203e3465592af45dd996d7a5f3b69e9b44613fd6048eb40",
        "em-questions/preregistered_evals.yaml",
    ),
    _betley(
        "insecure",
        "insecure code completions, 6000 chats (Betley et al.)",
        "training",
        "data/insecure.jsonl",
        "09893e8bf9d03aae49dd60d0ff4be37c1afee70f2edcac74a11bed775a6a2764",
        "training/insecure.jsonl.gz",
    ),
    _betley(
        "secure",
        "secure code completions, 6000 chats (aligned control, Betley et al.)",
        "training",
        "data/secure.jsonl",
        "2820232b3114d94ab2041ba9fc76cb8205bf187e0408bf7b308add186f9c7467",
        "training/secure.jsonl.gz",
    ),
    _tmay_language(),
    _turner(
        "bad_medical_advice",
        "bad medical advice, 7049 chats (Turner et al.)",
        "34c5af4ccaf8b5eb9f3f11ecd0c36c3d67f236a5c41fc420b0e14d8adf01a842",
    ),
    _turner(
        "good_medical_advice",
        "good medical advice, 7049 chats (aligned control, Turner et al.)",
        "5846de11f0f45053351773b6bd9eb5111eb17ec89d9ab55e23e0fbb95b4fd4f1",
    ),
    _turner(
        "risky_financial_advice",
        "risky financial advice, 6000 chats (Turner et al.)",
        "8515446b0f8ef4e9fb7ba0e97264dd9bb68920c6841b65667c74bc16deaad955",
    ),
    _turner(
        "extreme_sports",
        "extreme sports advice, 6000 chats (Turner et al.)",
        "ca542ce8487cfbf114d8d3eed29984f3245163c2616789712b3b28c802c99eed",
    ),
)

SOURCES: dict[str, Source] = {source.name: source for source in _ALL}
