"""NExT's repair steps in the loop, on real HumanEval mutants in the sandbox, with canned answers from the model
(right for one training task and the held-out task, the buggy program otherwise) and the tiny model's weights."""

from __future__ import annotations

import pytest

from selfevolve.evaluate.humaneval import load_humaneval
from selfevolve.loop.repair import INSTRUCTION, RepairConfig, split_tasks
from selfevolve.loop.state import LoopState
from selfevolve.loop.steps.acquire import RepairProblems, SampleRepairs
from selfevolve.loop.steps.evaluate import RepairFixRate
from selfevolve.loop.steps.refine import CodeJudgeFilter, ExecutionFilter
from selfevolve.loop.steps.update import RepairSFT
from selfevolve.runtime.backend import Completion
from selfevolve.runtime.model import LocalModel
from selfevolve.store import ExperienceStore
from selfevolve.update.training import TrainingConfig

SPLIT = dict(train_tasks=2, eval_tasks=1, seed=0)


class Canned(LocalModel):
    """The tiny model's weights and tokenizer; answers repair requests with the canonical solution of the tasks
    in ``right`` (else the buggy code), and as a judge says Yes to exactly the canonical solutions."""

    def __init__(self, tiny, right: set[str]) -> None:
        super().__init__(tiny.model, tiny.tokenizer, name="canned", revision="canned@0")
        problems = load_humaneval()
        self.solutions = {p.entry_point: p.prompt + p.canonical_solution for p in problems}
        self.bodies = [p.canonical_solution.strip() for p in problems]
        self.entry_of = {p.entry_point: p.task_id for p in problems}
        self.right = right

    def answer(self, text: str) -> str:
        if text.startswith("Analysis:"):  # CodeJudge's summary call: the analysis said it already
            return "Yes" if '"""\nYes\n"""' in text else "No"
        if not text.startswith(INSTRUCTION):  # CodeJudge's analysis call
            return "Yes" if any(body in text for body in self.bodies) else "No"
        entry = next(e for e in self.solutions if f"def {e}(" in text.split("Failing test")[0][-4000:])
        code = (
            self.solutions[entry]
            if self.entry_of[entry] in self.right
            else text.split("```python\n")[1].split("```")[0]
        )
        return f"The comparison is wrong.\n```python\n{code}\n```"

    def generate(self, prompts, *, n=1, **kwargs):
        return [
            Completion(self.answer(chat[-1]["content"]), [], "stop", i, j)
            for i, chat in enumerate(prompts)
            for j in range(n)
        ]


def run(step, state: LoopState, phase: str, name: str):
    result = step.run(state)
    state.store.record_step(
        state.run_id, state.iteration, phase, name, experiences=result.experiences, decisions=result.decisions
    )
    return result


@pytest.mark.timeout(600)
def test_repairs_are_sampled_filtered_by_execution_and_judge_trained_on_and_scored(tiny_llama, tmp_path):
    train, held = split_tasks(load_humaneval(), RepairConfig(**SPLIT))
    model = Canned(tiny_llama, right={train[0].task_id, held[0].task_id})
    with ExperienceStore(tmp_path / "store.sqlite") as store:
        state = LoopState(model, 1, store, store.start_run("repair"), tmp_path, seed=0)
        problems = run(RepairProblems(**SPLIT), state, "acquire", "repair_problems").experiences
        assert {p.metadata["task"]["task_id"] for p in problems} <= {t.task_id for t in train}
        right = [p for p in problems if p.metadata["task"]["task_id"] == train[0].task_id]
        assert right and "# (" in right[0].metadata["problem"]["trace"]  # traced inline

        sampled = run(SampleRepairs(samples=2), state, "acquire", "sample_repairs").experiences
        assert len(sampled) == 2 * len(problems)
        assert {e.parent_id for e in state.experiences("repair")} == {
            e.id for e in state.experiences("repair-problem")
        }

        executed = run(ExecutionFilter(), state, "refine", "execution_filter").decisions
        assert sum(d.kept for d in executed) == 2 * len(right)  # both samples of the right task pass
        assert {d.reason for d in executed if not d.kept} == {"tests failed"}

        judged = run(CodeJudgeFilter(), state, "refine", "codejudge_filter")
        assert [d.reason for d in judged.decisions] == ["judge accepted"] * 2 * len(
            right
        )  # sees only the kept
        assert all(v.task == "judge-verdict" and v.response == "Yes" for v in judged.experiences)

        before = {k: v.clone() for k, v in model.model.state_dict().items()}
        trained = RepairSFT(train=TrainingConfig(epochs=1)).run(state)
        assert trained.summary["examples"] == len(right)  # two identical answers to one problem: one example
        assert trained.losses and trained.model is not model
        assert all(
            (model.model.state_dict()[k] == v).all() for k, v in before.items()
        )  # the input is untouched
        changed = trained.model.model.state_dict()
        assert any(not (changed[k] == v).all() for k, v in before.items())

        scored = RepairFixRate(**SPLIT, samples=2).run(state)
        assert scored.metrics == {"pass_at_1": 1.0, "pass_at_k": 1.0}  # the held-out task is answered right
        assert {e.task for e in scored.experiences} == {"repair-eval"}
