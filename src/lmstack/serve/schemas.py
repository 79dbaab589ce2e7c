"""Request bodies of the OpenAI API, as pydantic models: wrong types and missing fields are 400s.

Unknown fields are ignored (clients send ones we do not use: `user`, `store`, `metadata`...), and `null` for a
field that has a default means that default (`NullMeansDefault`).
Our extras beyond OpenAI's fields follow vLLM: `top_k`, `min_p`, `repetition_penalty`, `ignore_eos`,
`stop_token_ids`, `min_tokens`, `include_stop_str_in_output`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, WrapValidator, model_validator
from pydantic_core import PydanticCustomError


def one_of(expected: str) -> WrapValidator:
    """A union field whose error says what the field may be, not pydantic's complaint about one of its members
    ('prompt.str: Input should be a valid string')."""

    def validate(value, handler):
        try:
            return handler(value)
        except ValidationError:
            raise PydanticCustomError("union_type", "should be {expected}", {"expected": expected}) from None

    return WrapValidator(validate)


class NullMeansDefault(BaseModel):
    """OpenAI's spec makes most fields nullable (`"temperature": null`, which the openai client sends for
    `temperature=None`), and null means the field's default, as in OpenAI's API and vLLM. Fields whose type holds
    None (`seed`, `stop`, `max_tokens`...) keep it: there None is a value of its own."""

    @model_validator(mode="before")
    @classmethod
    def _null_is_default(cls, data):
        if not isinstance(data, dict):
            return data  # pydantic refuses it
        return {name: value for name, value in data.items()
                if not (value is None and name in cls.model_fields and not cls.model_fields[name].is_required()
                        and type(None) not in get_args(cls.model_fields[name].annotation))}


class SamplingFields(NullMeansDefault):
    """The fields both endpoints share; they map one to one onto the engine's SamplingParams."""
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)  # NaN and Infinity are no setting's value

    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=0)
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    n: int = Field(default=1, ge=1, le=16)
    stop: Annotated[str | list[str] | None, one_of("a string or a list of up to 16 strings")] = None
    seed: int | None = None
    presence_penalty: float = Field(default=0.0, ge=-2, le=2)
    frequency_penalty: float = Field(default=0.0, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    top_k: int = Field(default=0, ge=-1)
    min_p: float = Field(default=0.0, ge=0, le=1)
    repetition_penalty: float = Field(default=1.0, gt=0)
    ignore_eos: bool = False
    stop_token_ids: list[int] = Field(default_factory=list, max_length=64)
    min_tokens: int = Field(default=0, ge=0)  # vLLM's: no stop before this many tokens
    include_stop_str_in_output: bool = False  # vLLM's: the text ends with the stop string that ended it


class StreamOptions(NullMeansDefault):
    include_usage: bool = False


class FunctionCall(BaseModel):
    name: str
    arguments: str | dict[str, Any] = "{}"


class ToolCall(BaseModel):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Annotated[str | list[TextPart] | None, one_of(
        'a string or a list of text parts {"type": "text", "text": "..."} (this server reads text only)')] = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None


class FunctionDefinition(BaseModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})


class Tool(BaseModel):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class NamedFunction(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    type: Literal["function"] = "function"
    function: NamedFunction


class JsonSchemaFormat(BaseModel):
    name: str = "response"
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=0)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[Tool] | None = None
    tool_choice: Annotated[Union[Literal["none", "auto", "required"], NamedToolChoice, None], one_of(
        '"none", "auto", "required", or {"type": "function", "function": {"name": "..."}}')] = None
    parallel_tool_calls: bool = True
    response_format: ResponseFormat | None = None


class CompletionRequest(SamplingFields):
    prompt: Annotated[str | list[str] | list[int] | list[list[int]], one_of(
        "a string, a list of strings, a list of token ids, or a list of token-id lists (the prompts of one request "
        "are all text or all token ids)")]
    echo: bool = False
    suffix: str | None = None  # refused unless empty: the model only continues text (as vLLM)
    best_of: int | None = None  # refused unless equal to n: every sample is returned
    logprobs: int | None = Field(default=None, ge=0, le=20)
    max_tokens: int | None = Field(default=16, ge=0)


SamplingFields.model_rebuild()
ChatCompletionRequest.model_rebuild()
CompletionRequest.model_rebuild()
