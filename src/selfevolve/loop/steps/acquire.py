"""Acquire steps: documents and the QA pairs SELF-PARAM synthesizes about them; NExT's traced repair problems
and the model's sampled repairs.

Every document is stored as an experience of task ``document`` (prompt: its title, response: its text), every
synthesized item as one of task ``qa`` whose parent is its document; a repair problem as ``repair-problem``
(the whole problem in its metadata), a sampled repair as ``repair`` whose parent is its problem.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import ClassVar

from selfevolve.acquire.hierarchy import (
    SEED_TASKS,
    HierarchyDataConfig,
    generate_hierarchy_data,
    load_seed_tasks,
)
from selfevolve.acquire.knowledge import fictional_knowledge, load_documents, load_questions
from selfevolve.acquire.synthesize import SynthesisConfig, synthesize
from selfevolve.acquire.trace import token_counter
from selfevolve.errors import SelfEvolveError
from selfevolve.evaluate.humaneval import load_humaneval
from selfevolve.loop.repair import (
    CLOSING_FENCE,
    RepairConfig,
    RepairProblem,
    build_problems,
    extract_fix,
    repair_prompt,
    repair_request,
    split_tasks,
)
from selfevolve.loop.state import LoopState, StepResult, existing_path
from selfevolve.records import Document, Problem, QAItem
from selfevolve.store import Experience

DOCUMENT = "document"
QA = "qa"
HIERARCHY = "hierarchy"


def _document_experiences(documents: list[Document], questions: list[QAItem], step: str) -> StepResult:
    """Documents as experiences; each carries the training questions about it (never held-out ones)."""
    by_doc: dict[str, list[dict]] = {}
    for item in questions:
        by_doc.setdefault(item.doc_id, []).append({"question": item.question, "answers": list(item.answers)})
    stray = sorted(set(by_doc) - {d.id for d in documents})
    if stray:
        raise SelfEvolveError(f"{step}: questions name unknown document id(s) {stray}; fix their doc_id")
    experiences = [
        Experience(
            run_id="",
            task=DOCUMENT,
            prompt=d.title,
            response=d.text,
            phase="acquire",
            method=step,
            metadata={"doc_id": d.id, "questions": by_doc.get(d.id, [])},
        )
        for d in documents
    ]
    return StepResult(experiences=experiences, summary={"documents": len(documents)})


def stored_documents(state: LoopState) -> dict[int, Document]:
    """This iteration's documents, by the id of their experience."""
    return {e.id: Document(e.metadata["doc_id"], e.prompt, e.response) for e in state.experiences(DOCUMENT)}


@dataclass
class FictionalDocuments:
    """A fictional knowledge set (invented people, organisations, places) that no model can already know."""

    PHASE: ClassVar[str] = "acquire"
    METRICS: ClassVar[tuple[str, ...]] = ()

    count: int = 1  # documents in the set
    seed: int = 0  # fixes every name, date and number (heldout_qa's "fictional:COUNT:SEED" must match)
    train_questions: bool = True  # attach the set's training questions, for synthesis to answer and train on

    def __post_init__(self) -> None:
        if self.count < 1:
            raise SelfEvolveError(f"count must be at least 1, got {self.count}; set it to 1 or more")

    def run(self, state: LoopState) -> StepResult:
        knowledge = fictional_knowledge(self.count, seed=self.seed)
        questions = list(knowledge.train) if self.train_questions else []
        return _document_experiences(list(knowledge.documents), questions, "fictional_documents")


@dataclass
class Documents:
    """Documents from the user's files: a .txt file, a folder of them, or JSONL (text, id, title)."""

    PHASE: ClassVar[str] = "acquire"
    METRICS: ClassVar[tuple[str, ...]] = ()

    path: str = ""  # where the documents are
    questions: str = ""  # optional JSONL of training questions (question, answer(s), doc_id)

    def __post_init__(self) -> None:
        if not self.path:
            raise SelfEvolveError(
                "documents.path is empty, so there is nothing to acquire; set it to a .txt file, a folder "
                "of them or a .jsonl file"
            )
        self.path = existing_path(self.path, "documents.path")
        self.questions = existing_path(self.questions, "documents.questions")

    def run(self, state: LoopState) -> StepResult:
        questions = load_questions(self.questions) if self.questions else []
        return _document_experiences(load_documents(self.path), questions, "documents")


@dataclass
class SynthesizeQA:
    """SELF-PARAM's experience synthesis: the model, with the document in its prompt, writes and answers
    questions and states facts (https://arxiv.org/abs/2410.00487). Filtering is left to refine steps."""

    PHASE: ClassVar[str] = "acquire"
    METRICS: ClassVar[tuple[str, ...]] = ()

    questions_per_document: int = 8  # questions sampled per document
    statements_per_document: int = 4  # factual statements sampled per document
    document_sentences: bool = True  # each sentence of the document is a statement too
    given_questions: bool = True  # also answer the documents' training questions
    temperature: float = 0.9
    max_new_tokens: int = 48

    def run(self, state: LoopState) -> StepResult:
        documents = stored_documents(state)
        if not documents:
            raise SelfEvolveError(
                "synthesize_qa found no documents in this iteration; put fictional_documents or documents "
                "before it in acquire"
            )
        given = [
            QAItem(e.metadata["doc_id"], q["question"], tuple(q["answers"]))
            for e in state.experiences(DOCUMENT)
            for q in (e.metadata.get("questions", []) if self.given_questions else [])
        ]
        config = SynthesisConfig(
            questions_per_document=self.questions_per_document,
            statements_per_document=self.statements_per_document,
            document_sentences=self.document_sentences,
            temperature=self.temperature,
            max_new_tokens=self.max_new_tokens,
            min_support=0.0,  # keep everything: grounding_filter decides, and its decisions are recorded
            seed=state.seed,
        )
        items = synthesize(state.model, list(documents.values()), config, given_questions=given)
        parent = {d.id: key for key, d in documents.items()}
        experiences = [
            Experience(
                run_id="",
                task=QA,
                prompt=item.request,
                response=item.response,
                phase="acquire",
                score=item.support,
                method="self-param-synthesis",
                model_revision=state.model.revision,
                metadata={"doc_id": item.doc_id, "source": item.source},
                parent_id=parent[item.doc_id],
            )
            for item in items
        ]
        sources: dict[str, int] = {}
        for item in items:
            sources[item.source] = sources.get(item.source, 0) + 1
        return StepResult(experiences=experiences, summary={"items": len(items), "sources": sources})


REPAIR_PROBLEM = "repair-problem"
REPAIR = "repair"


def repair_problem(experience: Experience) -> tuple[RepairProblem, Problem]:
    """The buggy program and its HumanEval task from a ``repair-problem`` experience."""
    return RepairProblem(**experience.metadata["problem"]), Problem(**experience.metadata["task"])


@dataclass
class RepairProblems:
    """NExT's repair problems: HumanEval solutions with one mutation that fails a test, each traced inline on
    the test it fails (https://arxiv.org/abs/2404.14662). The training tasks; ``repair_fix_rate`` holds out
    the next ``eval_tasks`` of the same seeded split."""

    PHASE: ClassVar[str] = "acquire"
    METRICS: ClassVar[tuple[str, ...]] = ()

    train_tasks: int = 16
    eval_tasks: int = 8  # must match repair_fix_rate's, so that no held-out task is trained on
    mutants_per_task: int = 1
    seed: int = 0  # the task split and the mutants (repair_fix_rate's seed must match)
    problems: str = ""  # HumanEval-format JSONL (.gz ok); empty: the bundled HumanEval

    def __post_init__(self) -> None:
        self.config()
        self.problems = existing_path(self.problems, "problems", "pass a HumanEval-format JSONL file")

    def config(self) -> RepairConfig:
        return RepairConfig(
            train_tasks=self.train_tasks,
            eval_tasks=self.eval_tasks,
            mutants_per_task=self.mutants_per_task,
            seed=self.seed,
        )

    def run(self, state: LoopState) -> StepResult:
        config = self.config()
        train, _ = split_tasks(load_humaneval(self.problems or None), config)
        by_id = {t.task_id: t for t in train}
        built = build_problems(train, config, token_counter(state.model.tokenizer))
        experiences = [
            Experience(
                run_id="",
                task=REPAIR_PROBLEM,
                prompt=p.key,
                response=p.program,
                phase="acquire",
                method="next-mutants",
                metadata={"problem": asdict(p), "task": asdict(by_id[p.task_id])},
            )
            for p in built
        ]
        return StepResult(experiences=experiences, summary={"problems": len(built), "tasks": len(train)})


@dataclass
class SampleRepairs:
    """NExT's sampling: the model explains the traced bug and writes a fixed function, ``samples`` times per
    problem. Nothing is run here; the execution filter (refine) runs the fixes in the sandbox."""

    PHASE: ClassVar[str] = "acquire"
    METRICS: ClassVar[tuple[str, ...]] = ()

    samples: int = 4  # the paper's N per problem and round
    temperature: float = 0.8
    top_p: float = 0.95
    max_new_tokens: int = 384
    traced: bool = True  # the prompt carries the inline trace (NExT); False: the plain buggy code
    exemplar: bool = True  # one worked example before each prompt

    def run(self, state: LoopState) -> StepResult:
        stored = state.experiences(REPAIR_PROBLEM)
        if not stored:
            raise SelfEvolveError(
                "sample_repairs found no repair problems; put repair_problems before it in acquire"
            )
        problems = [repair_problem(e)[0] for e in stored]
        replies = state.model.generate(
            [repair_prompt(p, self.traced, self.exemplar) for p in problems],
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            stop=[CLOSING_FENCE],  # the answer is complete once its code block is
            n=self.samples,
            seed=state.seed,
        )
        experiences = []
        for reply in replies:
            text = reply.text + (CLOSING_FENCE.rstrip() if reply.text.count("```") % 2 else "")
            problem = problems[reply.prompt_index]
            experiences.append(
                Experience(
                    run_id="",
                    task=REPAIR,
                    prompt=repair_request(problem, self.traced),
                    response=text,
                    phase="acquire",
                    method="next-repair",
                    model_revision=state.model.revision,
                    metadata={
                        "problem": problem.key,
                        "sample": reply.sample_index,
                        "traced": self.traced,
                        "exemplar": self.exemplar,
                        "fix": extract_fix(text, problem.entry_point),
                    },
                    parent_id=stored[reply.prompt_index].id,
                )
            )
        return StepResult(experiences=experiences, summary={"samples": len(experiences)})


@dataclass
class HierarchyData:
    """Instruction-hierarchy training conversations written with the model (context synthesis, context
    ignorance by distillation, refusals, look-alikes, ordinary data; https://arxiv.org/abs/2404.13208).
    Each is an experience of task ``hierarchy``: prompt = the conversation as JSON, response = the target."""

    PHASE: ClassVar[str] = "acquire"
    METRICS: ClassVar[tuple[str, ...]] = ()

    data: HierarchyDataConfig = field(default_factory=HierarchyDataConfig)
    seed_tasks: str = ""  # optional JSONL of seed tasks ('task' field); default: the built-in ones

    def __post_init__(self) -> None:
        self.seed_tasks = existing_path(self.seed_tasks, "seed_tasks")

    def run(self, state: LoopState) -> StepResult:
        tasks = load_seed_tasks(self.seed_tasks) if self.seed_tasks else SEED_TASKS
        config = HierarchyDataConfig(**{**asdict(self.data), "seed": self.data.seed + state.seed})
        examples = generate_hierarchy_data(state.model, config, tasks)
        experiences = [
            Experience(
                run_id="",
                task=HIERARCHY,
                prompt=json.dumps(list(e.messages)),
                response=e.target,
                phase="acquire",
                method="hierarchy_data",
                model_revision=state.model.revision,
                metadata={"kind": e.kind, "family": e.family},
            )
            for e in examples
        ]
        kinds: dict[str, int] = {}
        for e in examples:
            kinds[e.kind] = kinds.get(e.kind, 0) + 1
        return StepResult(experiences=experiences, summary={"examples": len(examples), "kinds": kinds})
