"""General knowledge for measuring retention: probe questions and plain prose for perplexity.

Both are unrelated to anything the loop injects; the retention step measures what an update costs on them.
Pass your own with ``retention.probes`` (JSONL) and ``retention.texts`` (.txt, folder or JSONL).
"""

from __future__ import annotations

GENERAL_QUESTIONS = (
    ("What is the capital of France?", "Paris"),
    ("What is the capital of Japan?", "Tokyo"),
    ("What is the capital of Italy?", "Rome"),
    ("What is the capital of Germany?", "Berlin"),
    ("What is the capital of Spain?", "Madrid"),
    ("What is the capital of England?", "London"),
    ("How many days are there in a week?", "seven"),
    ("What is the largest planet in our solar system?", "Jupiter"),
    ("Which planet is known as the Red Planet?", "Mars"),
    ("What gas do plants absorb from the air?", "carbon dioxide"),
    ("What is the chemical symbol for water?", "H2O"),
    ("Who wrote Romeo and Juliet?", "Shakespeare"),
    ("What is the freezing point of water in degrees Celsius?", "0"),
    ("What is the largest ocean on Earth?", "Pacific"),
    ("What colour is the sky on a clear day?", "blue"),
    ("Which animal is known as the king of the jungle?", "lion"),
    ("What is the tallest mountain in the world?", "Everest"),
    ("What language is spoken in Brazil?", "Portuguese"),
    ("Who painted the Mona Lisa?", "Leonardo da Vinci"),
    ("What is the closest star to Earth?", "Sun"),
)

GENERAL_TEXTS = (
    "Rivers shape the land they cross. Over thousands of years, running water carries sand and stones "
    "downstream, cuts valleys into rock and builds wide plains where it slows down near the sea. Many of the "
    "oldest cities in the world grew up beside rivers, because rivers gave people fresh water, fertile soil "
    "for farming and an easy way to move goods by boat. Floods were a danger, but they also spread rich mud "
    "over the fields, and farmers learned to plan their year around the rise and fall of the water.",
    "A bicycle turns the push of a rider's legs into forward motion. The pedals drive a chain, the chain turns "
    "a small gear on the back wheel, and the wheel rolls the bicycle along the road. Gears let the rider "
    "choose between climbing a hill slowly with little effort and racing along a flat road at speed. The "
    "first bicycles had no pedals at all: riders pushed themselves along with their feet, and it took many "
    "years of small improvements before the machine looked the way it does today.",
    "Bread is one of the oldest prepared foods. Flour and water are mixed into a dough, and yeast, a tiny "
    "living fungus, feeds on the sugars in the flour and releases gas. The gas is trapped in the stretchy "
    "dough and makes it rise. When the dough is baked in a hot oven, the gas expands, the yeast dies, and "
    "the outside of the loaf turns brown and crisp. Bakers around the world use the same simple steps, yet "
    "every region has its own shapes, grains and flavours.",
    "The moon travels around the earth about once a month. It gives off no light of its own; what we see is "
    "sunlight reflected from its grey, dusty surface. As the moon moves along its path, we see different "
    "amounts of its sunlit side, which is why it seems to change shape from a thin crescent to a full circle "
    "and back again. The pull of the moon's gravity also lifts the oceans slightly, and this is the main "
    "cause of the tides that rise and fall along the coasts twice a day.",
)
