"""A deterministic chat sample in the ultrachat_200k record format, made offline.

It stands in for HuggingFaceH4/ultrachat_200k on the local target: same fields (`prompt`,
`prompt_id`, `messages`), short factual conversations a small model can learn in seconds.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path

FOUNDERS = {
    "Microsoft": "Bill Gates and Paul Allen in 1975",
    "Apple": "Steve Jobs, Steve Wozniak and Ronald Wayne in 1976",
    "Amazon": "Jeff Bezos in 1994",
    "Google": "Larry Page and Sergey Brin in 1998",
    "Tesla": "Martin Eberhard and Marc Tarpenning in 2003",
    "Netflix": "Reed Hastings and Marc Randolph in 1997",
    "Intel": "Gordon Moore and Robert Noyce in 1968",
    "Nvidia": "Jensen Huang, Chris Malachowsky and Curtis Priem in 1993",
    "Oracle": "Larry Ellison, Bob Miner and Ed Oates in 1977",
    "IBM": "Charles Ranlett Flint in 1911",
    "Sony": "Masaru Ibuka and Akio Morita in 1946",
    "Samsung": "Lee Byung-chul in 1938",
    "Toyota": "Kiichiro Toyoda in 1937",
    "Ford": "Henry Ford in 1903",
    "Nike": "Phil Knight and Bill Bowerman in 1964",
    "Spotify": "Daniel Ek and Martin Lorentzon in 2006",
    "Airbnb": "Brian Chesky, Joe Gebbia and Nathan Blecharczyk in 2008",
    "Wikipedia": "Jimmy Wales and Larry Sanger in 2001",
    "Facebook": "Mark Zuckerberg and his college roommates in 2004",
    "Adobe": "John Warnock and Charles Geschke in 1982",
}
CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Portugal": "Lisbon",
    "Japan": "Tokyo", "Canada": "Ottawa", "Australia": "Canberra", "Brazil": "Brasilia", "Egypt": "Cairo",
    "Kenya": "Nairobi", "India": "New Delhi", "China": "Beijing", "Mexico": "Mexico City", "Peru": "Lima",
    "Norway": "Oslo", "Sweden": "Stockholm", "Poland": "Warsaw", "Greece": "Athens", "Turkey": "Ankara",
}
INVENTIONS = {
    "the telephone": "Alexander Graham Bell, who patented it in 1876",
    "the light bulb": "Thomas Edison, who made the first practical one in 1879",
    "the World Wide Web": "Tim Berners-Lee, at CERN in 1989",
    "the printing press": "Johannes Gutenberg, around 1440",
    "the airplane": "the Wright brothers, who flew it in 1903",
    "penicillin": "Alexander Fleming, who discovered it in 1928",
    "the steam engine": "James Watt, who improved it in 1769",
    "the radio": "Guglielmo Marconi, in the 1890s",
    "the transistor": "John Bardeen, Walter Brattain and William Shockley, in 1947",
    "the Python language": "Guido van Rossum, who released it in 1991",
    "the telescope": "Hans Lippershey, in 1608",
    "the computer mouse": "Douglas Engelbart, in the 1960s",
    "dynamite": "Alfred Nobel, in 1867",
    "the television": "John Logie Baird, who showed it in 1926",
    "the bicycle": "Karl Drais, in 1817",
}
FOUNDER_QUESTIONS = (
    "Who founded {0}?", "Who were the founders of {0}?", "Tell me who started {0}.", "Who created {0}?"
)
CAPITAL_QUESTIONS = (
    "What is the capital of {0}?", "Which city is the capital of {0}?", "Name the capital city of {0}.",
    "What city serves as the capital of {0}?",
)
INVENTION_QUESTIONS = ("Who invented {0}?", "Who is credited with {0}?", "Who came up with {0}?")
FOLLOW_UP = "Can you say that in one short sentence?"


def _conversation(prompt: str, answer: str, follow_up: str | None) -> dict:
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    if follow_up:
        messages += [{"role": "user", "content": FOLLOW_UP}, {"role": "assistant", "content": follow_up}]
    return {
        "prompt": prompt,
        "prompt_id": hashlib.sha256(prompt.encode()).hexdigest(),
        "messages": messages,
    }


def _all_conversations() -> list[dict]:
    records = []
    for company, founders in FOUNDERS.items():
        for question in FOUNDER_QUESTIONS:
            answer = f"{company} was founded by {founders}."
            records.append(_conversation(question.format(company), answer, f"{founders.split(' in ')[0]}."))
    for country, capital in CAPITALS.items():
        for question in CAPITAL_QUESTIONS:
            answer = f"The capital of {country} is {capital}."
            records.append(_conversation(question.format(country), answer, f"{capital}."))
    for thing, inventor in INVENTIONS.items():
        for question in INVENTION_QUESTIONS:
            answer = f"{thing[0].upper() + thing[1:]} is credited to {inventor}."
            records.append(_conversation(question.format(thing), answer, None))
    return records


def make_sample(size: int) -> list[dict]:
    """`size` conversations; past the distinct ones, records repeat with a numbered follow-up prompt."""
    base = _all_conversations()
    records = []
    for index, record in zip(range(size), itertools.cycle(base)):
        if index >= len(base):
            prompt = f"{record['prompt']} (question {index // len(base) + 1})"
            record = _conversation(prompt, record["messages"][1]["content"], None)
        records.append(record)
    return records


def write_sample(path: Path, size: int) -> Path:
    """Write the sample as JSON Lines, the same layout the dataset stage reads from any local file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for record in make_sample(size):
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path
