"""Validate a parsed JSON body against a request schema."""

from __future__ import annotations

from pydantic import BaseModel, ValidationError

from impetus.api.errors import from_validation_error


def parse(schema: type[BaseModel], data: dict):
    try:
        return schema.model_validate(data)
    except ValidationError as error:
        raise from_validation_error(error) from None
