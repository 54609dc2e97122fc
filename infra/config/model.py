"""The base of every model of the cluster file.

It refuses unknown keys (a misspelt key would otherwise be ignored without a word), converts no type
(`port: "22"` is an error, not 22), freezes what it validated, and lets no string of any model hold a
control character.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, model_validator

from .values import control_character_problem, invalid_value, quoted, strings_in


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    @model_validator(mode="after")
    def _no_control_characters(self) -> StrictModel:
        # Every string of every model, those of fields added later included. Runs after the fields'
        # own rules, whose messages say more; nested models have checked their own strings by then.
        for field in type(self).model_fields:
            for within, text in strings_in(getattr(self, field), (field,)):
                problem = control_character_problem(text)
                if problem:
                    raise invalid_value(f"{quoted(text)} {problem}", within=within)
        return self
