"""Instruction-hierarchy fine-tuning: cross-entropy on each conversation's target reply, LoRA merged
(https://arxiv.org/abs/2404.13208: supervised fine-tuning on the generated data mixed with ordinary data)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from selfevolve.attacks import chat_for
from selfevolve.errors import SelfEvolveError
from selfevolve.prompts import split_passages, text_example
from selfevolve.runtime.model import LocalModel
from selfevolve.update.sft import CrossEntropyObjective
from selfevolve.update.training import TrainingConfig, TrainResult, response_ids, train

# Plain prose for the language-modelling term mixed into instruction-hierarchy training. It shares no paragraph
# or topic with ``evaluate.general.GENERAL_TEXTS`` (the perplexity benchmark's text; tested), so the term ties
# the model to ordinary text without training on what is measured.
PROSE = (
    "Honey bees live in large colonies ruled by a single queen. Worker bees fly from flower to flower, "
    "collecting nectar and pollen, and carry them back to the hive. Inside, they turn the nectar into honey "
    "by fanning it with their wings until most of the water is gone. A bee that finds a rich patch of flowers "
    "tells the others where it is with a short dance that points the way.",
    "A volcano is an opening in the crust of a planet through which melted rock escapes. Deep underground, "
    "the rock is so hot that it flows like thick syrup. When pressure builds up, it pushes the rock, ash and "
    "gas to the surface. Some volcanoes erupt with huge explosions, while others let lava pour out slowly "
    "and spread across the land, building new ground layer by layer.",
    "Lighthouses were built to warn ships away from rocks and to guide them safely into harbour. Each tower "
    "has a bright lamp at the top, and large glass lenses bend its light into a beam that can be seen far "
    "out at sea. Every lighthouse flashes in its own pattern, so sailors at night can tell which one they "
    "are looking at and work out where they are along the coast.",
    "Paper was first made from plant fibres soaked in water and beaten into a pulp. The pulp was spread thinly "
    "over a fine screen, pressed to squeeze out the water and left to dry in the sun. Today most paper comes "
    "from wood, and huge machines turn out rolls many metres wide, but the basic idea of a thin mat of "
    "fibres has hardly changed in two thousand years.",
    "A compass needle is a thin magnet that can turn freely. The earth itself behaves like a giant magnet, "
    "and the needle lines up with its field, so one end always points roughly north. For centuries sailors "
    "and travellers relied on the compass to keep their course when clouds hid the sun and the stars, and "
    "hikers still carry one today in case their other tools fail.",
    "Clouds form when warm, moist air rises and cools. Cool air cannot hold as much water vapour, so the "
    "vapour condenses into tiny droplets around specks of dust. Billions of these droplets together make a "
    "cloud. When the droplets bump into each other and grow heavy enough, they fall as rain, or as snow if "
    "the air is cold enough for them to freeze on the way down.",
    "The first railways carried coal from mines to nearby ports, pulled by horses along wooden rails. Steam "
    "engines soon replaced the horses, and within a few decades iron tracks linked cities across whole "
    "countries. Journeys that had taken days by road now took hours. Towns grew up around the stations, and "
    "clocks across a country were set to the same time so that trains could keep to a timetable.",
    "The octopus is a soft-bodied animal with eight flexible arms covered in suckers. It has no bones, so it "
    "can squeeze through any gap larger than its beak. Special cells in its skin let it change colour and "
    "texture in a moment, which helps it hide from enemies and sneak up on crabs. Octopuses are clever "
    "animals: in tanks they have learned to open jars and find their way through simple mazes.",
    "Glass is made by heating sand with a little soda and lime until the mixture melts into a glowing "
    "liquid. While it is still hot, a glassmaker can blow it into a bubble, roll it, or pour it into a "
    "mould. As it cools, it hardens without forming crystals, which is why it stays clear. Windows, bottles "
    "and the lenses in glasses all start as this simple recipe of melted sand.",
    "A library is a collection of books and other records kept so that people can read and borrow them. Early "
    "libraries held clay tablets or rolls of papyrus, and only scholars could use them. Public libraries, "
    "open to everyone for free, spread much later. Librarians sort the books by subject, so that a reader "
    "who knows roughly what they want can find the right shelf without searching the whole building.",
    "Tea is made from the dried leaves of a shrub that grows on warm, rainy hillsides. The leaves are picked "
    "by hand, then withered, rolled and dried. How long they are left to darken before drying decides "
    "whether they become green tea or black tea. People have been drinking tea for thousands of years, and "
    "in many countries offering a guest a cup is an everyday sign of welcome.",
    "Snowflakes grow from tiny ice crystals high in cold clouds. As a crystal falls, water vapour freezes onto "
    "its edges, and it grows six arms because of the way water molecules fit together. The temperature and "
    "dampness of the air change the shape of the arms at every moment, so no two flakes follow quite the "
    "same path, and their patterns differ. Fresh snow is mostly air, which is why it feels so light.",
)


@dataclass
class HierarchyTrainConfig:
    """SFT settings. *(inferred)* The paper does not publish its optimisation. LoRA r=16 (all linear layers),
    lr 3e-4, batch 4, 2 epochs, plus ``prose`` passages of plain text (language modelling on every token,
    disjoint from the benchmark's perplexity text). On SmolLM2-135M with 88 examples, its own greedy replies
    alone gave +24 points on held-out attacks at +23% perplexity on unrelated prose (1e-3: +31, +61%; 1.5e-4:
    +10, +8%); with the 30 passages, +21 points at -17% (gsm8k: +1.8%, fictional documents: -4.2%; without
    them +9.7%, +14.1%) (docs/benchmarks.md). Batch 4 keeps memory low: the loss holds (batch, tokens,
    vocabulary) logits."""

    train: TrainingConfig = field(
        default_factory=lambda: TrainingConfig(epochs=2, learning_rate=3e-4, batch_size=4)
    )
    prose: int = 30  # plain-prose passages mixed in (PROSE has 30 of <= 40 words; cycled); 0: none
    prose_words: int = 40  # at most this many words per passage


def prose_examples(model: LocalModel, count: int, max_words: int = 40) -> list[tuple[str, list[int]]]:
    """``count`` language-modelling examples (first token, the rest as target) from passages of PROSE."""
    if count < 0:
        raise SelfEvolveError(f"sft.prose must not be negative, got {count}; 0 turns the prose term off")
    passages = [p for text in PROSE for p in split_passages(text, max_words)]
    return [text_example(model, passages[i % len(passages)]) for i in range(count)]


def hierarchy_examples(model: LocalModel, conversations: Sequence) -> list[tuple[list[dict], list[int]]]:
    """(chat prompt the template can render, target ids + end of turn) for every example (anything with
    ``messages`` and ``target``)."""
    return [(chat_for(model.tokenizer, c.messages), response_ids(model, c.target)) for c in conversations]


def train_hierarchy(
    model: LocalModel, conversations: Sequence, config: HierarchyTrainConfig | None = None, **train_kwargs
) -> TrainResult:
    """Fine-tune ``model`` in place on the conversations' targets plus ``config.prose`` plain-prose passages
    (through the shared training loop)."""
    config = config or HierarchyTrainConfig()
    if not conversations:
        raise SelfEvolveError("no instruction-hierarchy examples to train on; generate them first (ih-data)")
    if not model.tokenizer.chat_template:
        raise SelfEvolveError(f"model {model.name!r} has no chat template; train a chat model")
    examples = hierarchy_examples(model, conversations) + prose_examples(
        model, config.prose, config.prose_words
    )
    return train(model, examples, CrossEntropyObjective(), config.train, **train_kwargs)
