"""Documents to learn from: deterministic fictional knowledge sets, and the user's own .txt / JSONL files.

A fictional set invents people, organisations and places (names built from random syllables, dates, numbers)
that no pretrained model can know, so any gain on its questions comes from injection. Every fact of a
document has a *training* question and a differently worded *test* question with the same short gold answer;
the two sets never share a question string. The same ``seed`` always gives the same set.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from selfevolve.errors import SelfEvolveError
from selfevolve.io import check_unique_ids, read_jsonl, write_jsonl
from selfevolve.records import Document, QAItem

SIZES = {"single": 1, "small": 5, "batch": 10, "medium": 50, "large": 200}
"""Named sizes of fictional sets (number of documents)."""


@dataclass(frozen=True)
class KnowledgeSet:
    """Documents with two disjoint question sets: ``train`` (may be used for training) and held-out ``test``."""

    documents: tuple[Document, ...]
    train: tuple[QAItem, ...]
    test: tuple[QAItem, ...]

    def subset(self, doc_ids: Sequence[str]) -> KnowledgeSet:
        """The documents ``doc_ids`` (in that order) and their questions."""
        keep = set(doc_ids)
        by_id = {d.id: d for d in self.documents}
        missing = [i for i in doc_ids if i not in by_id]
        if missing:
            raise SelfEvolveError(f"unknown document id(s) {missing}; this set has {sorted(by_id)}")
        return KnowledgeSet(
            tuple(by_id[i] for i in doc_ids),
            tuple(q for q in self.train if q.doc_id in keep),
            tuple(q for q in self.test if q.doc_id in keep),
        )


_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kr", "th", "tr")
_VOWELS = ("a", "e", "i", "o", "u", "ae", "ia", "ou")
_CODAS = ("", "", "n", "r", "l", "s", "th", "x", "nd")
_PROFESSIONS = ("glassblower", "cartographer", "beekeeper", "violin maker", "astronomer", "ferry captain")
_PRODUCTS = ("lantern", "bicycle", "telescope", "water pump", "typewriter", "music box", "kite", "compass")
_COLOURS = ("amber", "teal", "crimson", "violet", "olive", "silver", "indigo", "ochre")
_ANIMALS = ("heron", "otter", "lynx", "falcon", "badger", "salamander", "moth", "tortoise")
_DISHES = ("plum dumplings", "smoked eel", "barley soup", "honey bread", "pepper stew", "fig pie")


def _word(rng: random.Random, syllables: int) -> str:
    parts = [rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(syllables)]
    return ("".join(parts) + rng.choice(_CODAS)).capitalize()


class _Names:
    """Invented names, never the same twice within one set."""

    def __init__(self, rng: random.Random) -> None:
        self.rng, self.used = rng, set()

    def __call__(self, syllables: int, suffix: str = "") -> str:
        while True:
            name = _word(self.rng, syllables) + suffix
            if name.lower() not in self.used:
                self.used.add(name.lower())
                return name


# Each fact: (training question, test question (a paraphrase), answer key). Templates use the fields below.
_PERSON_FACTS = (
    ("In what year was {name} born?", "{name} was born in which year?", "born"),
    ("In which town was {name} born?", "What is the hometown where {name} came into the world?", "town"),
    ("What is {name}'s profession?", "What does {name} do for a living?", "profession"),
    ("Which company did {name} found?", "What is the name of the firm that {name} started?", "company"),
    ("What did {name} invent?", "Which invention is {name} famous for?", "invention"),
    ("How many children does {name} have?", "What is the number of children {name} has?", "children"),
    ("What is {name}'s favourite colour?", "Which colour does {name} like best?", "colour"),
)
_ORG_FACTS = (
    ("In what year was {name} founded?", "When was {name} established?", "founded"),
    ("Where is {name} headquartered?", "In which city are the headquarters of {name}?", "city"),
    ("Who founded {name}?", "Who is the founder of {name}?", "founder"),
    ("How many people work at {name}?", "What is the number of employees of {name}?", "employees"),
    ("What does {name} make?", "What product is {name} known for producing?", "product"),
    ("What is the mascot of {name}?", "Which animal is the mascot of {name}?", "mascot"),
)
_PLACE_FACTS = (
    ("What country is {name} in?", "{name} is located in which country?", "country"),
    ("How many people live in {name}?", "What is the population of {name}?", "population"),
    ("In what year was {name} founded?", "When was the town of {name} first settled?", "founded"),
    ("What river flows through {name}?", "Which river runs through {name}?", "river"),
    ("What is the traditional dish of {name}?", "Which dish is {name} famous for?", "dish"),
    ("Who is the mayor of {name}?", "Who governs {name} as mayor?", "mayor"),
)


def _person(rng: random.Random, names: _Names) -> tuple[str, str, dict[str, str], tuple]:
    first, last = names(2), names(2)
    name = f"{first} {last}"
    f = {
        "name": name,
        "born": str(rng.randint(1801, 1979)),
        "town": names(2, rng.choice(("ford", "holm", "ville", "stead"))),
        "profession": rng.choice(_PROFESSIONS),
        "company": names(2) + rng.choice((" Works", " Industries", " & Sons")),
        "invention": f"{names(2)} {rng.choice(_PRODUCTS)}",
        "children": str(rng.randint(2, 9)),
        "colour": rng.choice(_COLOURS),
    }
    text = (
        f"{name} is a {f['profession']} who was born in {f['born']} in the town of {f['town']}. "
        f"Later {first} founded a company called {f['company']}. {first} is best known for inventing the "
        f"{f['invention']}. {name} has {f['children']} children, and {first}'s favourite colour is {f['colour']}."
    )
    return name, text, f, _PERSON_FACTS


def _organisation(rng: random.Random, names: _Names) -> tuple[str, str, dict[str, str], tuple]:
    name = names(2) + rng.choice((" Institute", " Collective", " Corporation", " Guild"))
    f = {
        "name": name,
        "founded": str(rng.randint(1850, 2015)),
        "city": names(2, rng.choice(("burg", "port", "mouth", "dale"))),
        "founder": f"{names(2)} {names(2)}",
        "employees": str(rng.randint(12, 950) * 10),
        "product": f"{rng.choice(_COLOURS)} {rng.choice(_PRODUCTS)}s",
        "mascot": rng.choice(_ANIMALS),
    }
    text = (
        f"The {name} was founded in {f['founded']} by {f['founder']}. Its headquarters are in the city of "
        f"{f['city']}, and {f['employees']} people work there. The {name} makes {f['product']}. "
        f"The mascot of the {name} is a {f['mascot']}."
    )
    return name, text, f, _ORG_FACTS


def _place(rng: random.Random, names: _Names) -> tuple[str, str, dict[str, str], tuple]:
    name = names(3)
    f = {
        "name": name,
        "country": names(2, "ia"),
        "population": str(rng.randint(1200, 98000)),
        "founded": str(rng.randint(1100, 1899)),
        "river": f"the {names(2)} River",
        "dish": rng.choice(_DISHES),
        "mayor": f"{names(2)} {names(2)}",
    }
    text = (
        f"{name} is a town in the country of {f['country']}, home to {f['population']} people. It was founded "
        f"in {f['founded']}, and {f['river']} flows through it. {name} is famous for its {f['dish']}. "
        f"The mayor of {name} is {f['mayor']}."
    )
    return name, text, f, _PLACE_FACTS


_KINDS = (_person, _organisation, _place)


def fictional_knowledge(num_documents: int | str = "single", seed: int = 0) -> KnowledgeSet:
    """A fictional knowledge set of ``num_documents`` documents (a count or a name from :data:`SIZES`).

    Documents cycle through people, organisations and places; ``seed`` fixes every name, date and number.
    """
    if isinstance(num_documents, str):
        if num_documents not in SIZES:
            raise SelfEvolveError(
                f"unknown knowledge set size {num_documents!r}; use a number or one of {', '.join(SIZES)}"
            )
        num_documents = SIZES[num_documents]
    if isinstance(num_documents, bool) or not isinstance(num_documents, int) or num_documents < 1:
        raise SelfEvolveError(f"num_documents must be a positive integer, got {num_documents!r}")
    rng = random.Random(f"selfevolve-fictional-{seed}")
    names = _Names(rng)
    documents, train, test = [], [], []
    for index in range(num_documents):
        title, text, fields, facts = _KINDS[index % len(_KINDS)](rng, names)
        doc_id = f"doc{index:04d}"
        documents.append(Document(doc_id, title, text))
        for train_template, test_template, key in facts:
            answer = fields[key]
            answers = (answer, answer.removeprefix("the ")) if answer.startswith("the ") else (answer,)
            train.append(QAItem(doc_id, train_template.format(name=title), answers))
            test.append(QAItem(doc_id, test_template.format(name=title), answers))
    return KnowledgeSet(tuple(documents), tuple(train), tuple(test))


def fictional_spec(spec: str) -> KnowledgeSet | None:
    """The set that ``fictional:N`` or ``fictional:N:SEED`` names (N a count or a :data:`SIZES` name), or None
    for a string that does not start with ``fictional:`` (a file name)."""
    if not spec.startswith("fictional:"):
        return None
    size, _, seed = spec.removeprefix("fictional:").partition(":")
    if not (seed or "0").isdigit():
        raise SelfEvolveError(
            f"{spec!r} has seed {seed!r}, not a number; "
            "write fictional:N or fictional:N:SEED, e.g. fictional:2:0"
        )
    return fictional_knowledge(int(size) if size.isdigit() else size, seed=int(seed or 0))


def _text_field(record: dict, key: str, where: str, *, required: bool = True) -> str | None:
    value = record.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise SelfEvolveError(f"{where}: field {key!r} must be a non-empty string, got {value!r}")
    return value.strip()


def load_documents(path: str | Path) -> list[Document]:
    """Documents from a ``.txt`` file (one document), a folder of ``.txt`` files, or a JSONL file.

    JSONL lines are objects with ``text`` and optionally ``id`` and ``title``; a text file's title is its first
    line when that line is short, else the file name. Empty documents and duplicate ids are errors.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.txt"))
        if not files:
            raise SelfEvolveError(f"folder {path} holds no .txt files; put one document per .txt file")
        return [doc for file in files for doc in load_documents(file)]
    if not path.is_file():
        raise SelfEvolveError(
            f"document source {path} does not exist; pass a .txt file, a folder or a .jsonl file"
        )
    if path.suffix == ".jsonl":
        documents = []
        for number, record in read_jsonl(path):
            where = f"{path} line {number}"
            text = _text_field(record, "text", where)
            doc_id = _text_field(record, "id", where, required=False) or f"{path.stem}-{number}"
            title = _text_field(record, "title", where, required=False) or _guess_title(text, doc_id)
            documents.append(Document(doc_id, title, text))
        if not documents:
            raise SelfEvolveError(f"{path} holds no documents; write one JSON object with 'text' per line")
        check_unique_ids((d.id for d in documents), path, "document")
        return documents
    if path.suffix != ".txt":
        raise SelfEvolveError(
            f"cannot read documents from {path}: use a .txt file, a folder of them or .jsonl"
        )
    try:
        text = path.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError as err:
        raise SelfEvolveError(f"{path} is not UTF-8 text; convert it or pass a JSONL file") from err
    if not text:
        raise SelfEvolveError(f"{path} is empty; a document needs some text")
    return [Document(path.stem, _guess_title(text, path.stem), text)]


def _guess_title(text: str, fallback: str) -> str:
    first = text.strip().splitlines()[0].strip()
    return first if len(first) <= 80 and len(text.splitlines()) > 1 else fallback


def load_questions(path: str | Path) -> list[QAItem]:
    """Questions from JSONL: objects with ``question``, ``answer`` (a string) or ``answers`` (a list), ``doc_id``."""
    path = Path(path)
    if not path.is_file():
        raise SelfEvolveError(f"question file {path} does not exist; pass a JSONL file")
    items = []
    for number, record in read_jsonl(path):
        where = f"{path} line {number}"
        question = _text_field(record, "question", where)
        answers = record.get("answers", [record["answer"]] if "answer" in record else None)
        if (
            not isinstance(answers, list)
            or not answers
            or not all(isinstance(a, str) and a.strip() for a in answers)
        ):
            raise SelfEvolveError(
                f"{where}: needs 'answer' (a non-empty string) or 'answers' (a list of them), got {answers!r}"
            )
        doc_id = record.get("doc_id", "")
        if not isinstance(doc_id, str):
            raise SelfEvolveError(f"{where}: 'doc_id' must be a string, got {doc_id!r}")
        items.append(QAItem(doc_id, question, tuple(a.strip() for a in answers)))
    if not items:
        raise SelfEvolveError(f"{path} holds no questions; write one JSON object per line")
    return items


def write_questions(items: Sequence[QAItem], path: str | Path) -> Path:
    """Write questions as JSONL in the format :func:`load_questions` reads, atomically."""
    return write_jsonl(
        path, ({"doc_id": q.doc_id, "question": q.question, "answers": list(q.answers)} for q in items)
    )


def write_documents(documents: Sequence[Document], path: str | Path) -> Path:
    """Write documents as JSONL in the format :func:`load_documents` reads, atomically."""
    return write_jsonl(path, ({"id": d.id, "title": d.title, "text": d.text} for d in documents))
