"""pico_jax.dataclass_flags: a dataclass's fields as absl flags (name, default, type and
help from the field), read back as field values; preprocessing's options and column
roles get their flags this way, so their defaults are declared once."""

import dataclasses

import pytest
from absl import flags

from pico_jax.cli import FlagError
from pico_jax.dataclass_flags import Fields
from pico_jax.ingest import preprocess, table


@dataclasses.dataclass(frozen=True)
class Toy:
  count: int = dataclasses.field(default=3, metadata={"help": "How many."})
  ratio: float = dataclasses.field(default=0.5, metadata={"help": "A ratio."})
  fast: bool = dataclasses.field(default=False, metadata={"help": "Go fast."})
  mode: str | None = dataclasses.field(default=None, metadata={
      "help": "The mode.", "choices": ("a", "b")})
  size: int = dataclasses.field(default=2 << 20, metadata={
      "help": "Bytes, as MiB.", "flag": "size_mb", "unit": 1 << 20})
  names: tuple[str, ...] | None = dataclasses.field(default=None, metadata={
      "help": "Some names."})
  weights: tuple[float, float] = dataclasses.field(default=(0.25, 0.75), metadata={
      "help": "Two weights."})
  pairs: tuple[tuple[str, int], ...] = dataclasses.field(default=(("x", 1),), metadata={
      "help": "named counts.", "metavar": "NAME=COUNT"})
  seps: tuple[tuple[str, str], ...] = dataclasses.field(default=(), metadata={
      "help": "separators.", "metavar": "COLUMN:SEPARATOR"})
  hidden: str = dataclasses.field(default="no flag", metadata={"help": "Excluded."})


def parse(cls, *argv, **kwargs):
  values = flags.FlagValues()
  fields = Fields(cls, flag_values=values, **kwargs)
  values(["prog", *argv])
  return fields, values


def test_defaults_types_and_help_come_from_the_fields():
  fields, values = parse(Toy, exclude=("hidden",))
  assert fields.values() == {f.name: f.default for f in dataclasses.fields(Toy)
                             if f.name != "hidden"}
  assert "hidden" not in values and values["size_mb"].default == 2
  assert values["pairs"].help == "NAME=COUNT,...: named counts."
  assert values["count"].help == "How many."
  fields, _ = parse(Toy, "--count=7", "--ratio=2", "--fast", "--mode=b", "--size_mb=5",
                    "--names=p,q", "--weights=1,0", "--pairs=a=b=3,c=4",
                    "--seps=tags::,t:|", exclude=("hidden",))
  assert fields.values() == {
      "count": 7, "ratio": 2.0, "fast": True, "mode": "b", "size": 5 << 20,
      "names": ("p", "q"), "weights": (1.0, 0.0), "pairs": (("a=b", 3), ("c", 4)),
      "seps": (("tags", ":"), ("t", "|"))}


@pytest.mark.parametrize("argv,message", [
    ("--pairs=a", "--pairs 'a': expected NAME=COUNT"),
    ("--pairs=a=x", "--pairs 'a=x': expected NAME=COUNT"),
    ("--seps=tags:", "--seps 'tags:': expected COLUMN:SEPARATOR"),
    ("--weights=1,x", "--weights 'x': expected a number"),
])
def test_a_list_item_that_does_not_parse_names_its_flag(argv, message):
  fields, _ = parse(Toy, argv, exclude=("hidden",))
  with pytest.raises(FlagError) as e:
    fields.values()
  assert str(e.value) == message


def test_a_rejected_value_is_named_as_its_flag_was_given():
  fields, _ = parse(Toy, "--size_mb=9", "--names=a,b", exclude=("hidden",))
  assert str(fields.error("size", "too big")) == "--size_mb=9: too big"
  assert str(fields.error("names", "unknown")) == "--names=a,b: unknown"


def test_preprocessing_flags_default_to_the_options():
  """No flag given: the options are ``Options()`` and the roles empty, so a default
  lives only in the dataclass."""
  fields, _ = parse(preprocess.Options, exclude=("table", "values"))
  assert preprocess.Options(**fields.values()) == preprocess.Options()
  values, _ = parse(table.ValuePolicy)
  assert table.ValuePolicy(**values.values()) == table.ValuePolicy()
  roles, _ = parse(table.TableRoles, "--click=c", "--conversion=v", "--multi=tags:|",
                   exclude=("sparse", "dense"))
  assert table.TableRoles(**roles.values()) == table.TableRoles(
      "c", "v", multi=(("tags", "|"),))


def test_a_field_of_a_type_without_a_flag_is_refused():
  @dataclasses.dataclass
  class Bad:
    roles: dict = dataclasses.field(default=None, metadata={"help": "?"})
  with pytest.raises(TypeError, match="no flag for type"):
    parse(Bad)
