"""Synthetic long-context QA, deterministic from a seed: documents of filler sentences about many
people, with the one fact a question needs placed anywhere among distractor facts, and answers as
short full sentences (`question: ... context: ...` in, one sentence out).

Distractors are built to defeat shortcuts: the same relation for other people, other relations
of the same person, and filler that mentions the same people and values in other roles ("visited
Oslo" beside "lives in Oslo"). Within a document no two people share a first name or a surname.
"""

import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

FIRST = """Ada Bram Cleo Dario Edda Finn Greta Hugo Ines Jonas Kira Lars Mila Nico Olga Pavel
Rosa Sven Tara Ugo Vera Wim Yara Zeno Alma Boris Carla Dmitri Elin Felix Gina Hans Ida Jules
Lena Marek Nora Otto""".split()
LAST = """Brenner Castell Dorsey Ekholm Farrow Galvin Hollis Ingram Jansen Keller Lindqvist Moreau
Novak Orsini Pereira Quist Rourke Sandoval Torres Ulrich Varga Weber Yilmaz Zander Abbott Bishop
Conway Delgado Emery Fischer Grant Horvat""".split()
CITIES = """Oslo Lisbon Dublin Prague Vienna Bergen Porto Lyon Munich Krakow Seville Turin Ghent
Tallinn Riga Malmo Bremen Nantes Bilbao Split Zagreb Basel Graz Leeds Cork Aarhus Utrecht
Verona""".split()
JOBS = """baker carpenter doctor pilot teacher lawyer painter plumber nurse chemist farmer tailor
librarian mechanic dentist sailor butcher journalist gardener potter""".split()
PETS = "dog cat parrot rabbit turtle hamster ferret goldfish pony lizard canary tortoise".split()
COLORS = "red blue green yellow purple orange black white grey pink brown silver".split()
INSTRUMENTS = "piano violin cello flute guitar trumpet drums harp banjo clarinet".split()
FOODS = "soup pasta rice bread cheese apples plums honey fish noodles dumplings pears".split()
AGES = [str(n) for n in range(19, 90)]


@dataclass(frozen=True)
class Relation:
    name: str
    values: list[str]
    facts: tuple[str, ...]  # ways a document states it
    question: str
    answer: str


RELATIONS = [
    Relation("city", CITIES, ("{e} lives in {v}.", "{e} has lived in {v} for many years."),
             "Where does {e} live?", "{e} lives in {v}."),
    Relation("job", JOBS, ("{e} works as a {v}.", "By trade, {e} is a {v}."),
             "What does {e} do for a living?", "{e} works as a {v}."),
    Relation("pet", PETS, ("{e} owns a {v}.", "At home, {e} keeps a {v}."),
             "What pet does {e} own?", "{e} owns a {v}."),
    Relation("color", COLORS,
             ("The favorite color of {e} is {v}.", "{e} likes {v} best of all colors."),
             "What is the favorite color of {e}?", "The favorite color of {e} is {v}."),
    Relation("age", AGES, ("{e} is {v} years old.", "{e} turned {v} this year."),
             "How old is {e}?", "{e} is {v} years old."),
    Relation("instrument", INSTRUMENTS,
             ("{e} plays the {v}.", "Every evening {e} practises the {v}."),
             "Which instrument does {e} play?", "{e} plays the {v}."),
    Relation("food", FOODS, ("The favorite food of {e} is {v}.", "{e} eats {v} whenever possible."),
             "What is the favorite food of {e}?", "The favorite food of {e} is {v}."),
]  # fmt: skip

PLACES = "market bridge station library harbour museum park bakery square garden tower".split()
ADJECTIVES = "quiet busy cold bright crowded empty calm noisy old new warm grey".split()
SEASONS = "spring summer autumn winter".split()
FILLER = [
    "{e} visited {city} last {season}.",
    "{e} met {e2} near the {place}.",
    "The {place} in {city} was {adj} that {season}.",
    "{e} talked about a {pet} with {e2}.",
    "Nobody in {city} had seen the {place} so {adj}.",
    "{e} once wanted to become a {job}.",
    "A {job} from {city} wrote a letter to {e}.",
    "{e} bought {food} at the {place} in {city}.",
    "It rained for {age} days in {city}.",
    "The old {place} was painted {color}.",
    "{e} and {e2} argued about the {instrument} for hours.",
    "In {season} the {place} is {adj} and {adj2}.",
    "{e} took the train from {city} to {city2}.",
    "The neighbour of {e} has a {color} door.",
    "People say the {place} near {city} is never {adj}.",
    "{e} borrowed a book about {food} from {e2}.",
    "A {pet} ran across the {place} in {city}.",
    "{e} heard a {instrument} playing in the {place}.",
]

LENGTHS = (500, 4000)  # document length in tokens


@dataclass(frozen=True)
class Example:
    question: str
    context: str
    answer: str
    person: str  # whom the question is about
    relation: str
    fact_start: int  # character offset of the needed fact in `context`
    value: str = ""  # the needed fact's value ("" when the document does not hold the answer)
    value_start: int = 0  # its character offset in `context`


def approximate_tokens(text: str) -> int:
    """Words and punctuation marks: close to the count of a BPE trained on this vocabulary."""
    return len(re.findall(r"\w+|[^\w\s]", text))


def _filler(rng: random.Random, people: list[str]) -> str:
    e, e2 = rng.sample(people, 2)
    city, city2 = rng.sample(CITIES, 2)
    adj, adj2 = rng.sample(ADJECTIVES, 2)
    return rng.choice(FILLER).format(
        e=e, e2=e2, city=city, city2=city2, adj=adj, adj2=adj2, season=rng.choice(SEASONS),
        place=rng.choice(PLACES), pet=rng.choice(PETS), job=rng.choice(JOBS),
        food=rng.choice(FOODS), age=rng.choice(AGES), color=rng.choice(COLORS),
        instrument=rng.choice(INSTRUMENTS),
    )  # fmt: skip


def _fact(rng: random.Random, relation: Relation, person: str, value: str) -> str:
    return rng.choice(relation.facts).format(e=person, v=value)


def make_example(
    rng: random.Random,
    lengths: tuple[int, int] = LENGTHS,
    count: Callable[[str], int] = approximate_tokens,
) -> Example:
    """One document of about `lengths` tokens (uniform), its question and answer."""
    # Many people, no two sharing a first name or a surname: a name token names one person.
    n = rng.randint(8, 18)
    people = [f"{a} {b}" for a, b in zip(rng.sample(FIRST, n), rng.sample(LAST, n), strict=True)]
    target, relation = people[-1], rng.choice(RELATIONS)
    value = rng.choice(relation.values)
    needed = _fact(rng, relation, target, value)
    distractors = [  # the target's other relations, and this relation for other people
        _fact(rng, r, target, rng.choice(r.values))
        for r in RELATIONS
        if r is not relation and rng.random() < 0.6
    ]
    others = [p for p in people if p != target]
    for person in rng.sample(others, min(len(others), rng.randint(3, 8))):
        distractors.append(_fact(rng, relation, person, rng.choice(relation.values)))
    for person in others:  # more facts about everyone, at most one per (person, relation)
        for r in rng.sample(RELATIONS, 2):
            if r is not relation:
                distractors.append(_fact(rng, r, person, rng.choice(r.values)))

    budget = rng.randint(*lengths) - count(needed)
    sentences = list(distractors)
    used = sum(count(s) for s in sentences)
    while used < budget:
        sentences.append(_filler(rng, people))
        used += count(sentences[-1])
    while sentences and used > budget:  # long distractor lists on short documents
        used -= count(sentences.pop(rng.randrange(len(sentences))))
    rng.shuffle(sentences)
    at = rng.randint(0, len(sentences))  # the needed fact anywhere: beginning, middle, end
    before = " ".join(sentences[:at])
    context = " ".join([*sentences[:at], needed, *sentences[at:]])
    fact_start = len(before) + 1 if before else 0
    return Example(
        question=relation.question.format(e=target),
        context=context,
        answer=relation.answer.format(e=target, v=value),
        person=target,
        relation=relation.name,
        fact_start=fact_start,
        value=value,  # every fact names the person before the value
        value_start=fact_start + needed.index(value, needed.index(target) + len(target)),
    )


def make_unanswerable(rng: random.Random, lengths: tuple[int, int] = LENGTHS, **kwargs) -> Example:
    """A document and a question about someone it never mentions (answer "", value "")."""
    example = make_example(rng, lengths, **kwargs)
    words = set(re.findall(r"\w+", example.context))
    first = rng.choice([n for n in FIRST if n not in words])
    last = rng.choice([n for n in LAST if n not in words])
    relation = next(r for r in RELATIONS if r.name == example.relation)
    absent = f"{first} {last}"
    return Example(relation.question.format(e=absent), example.context, "", absent,
                   relation.name, 0)  # fmt: skip


def examples(seed: int, n: int, lengths: tuple[int, int] = LENGTHS, **kwargs) -> Iterator[Example]:
    rng = random.Random(seed)
    for _ in range(n):
        yield make_example(rng, lengths, **kwargs)
