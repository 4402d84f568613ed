"""Request and response bodies of the OpenAI-compatible API (plus vLLM's extensions).

Types are strict (a string is not a number, `true` is not 1, NaN and infinities are refused),
unknown fields are tolerated as OpenAI does, and ranges are part of the schema so
/openapi.json tells clients the limits. Checks that need the model (context length,
vocabulary) happen in the handlers.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import AllowInfNan, BaseModel, ConfigDict, Field, Strict, StrictBool, StrictInt, StrictStr

from tenk.engine.sampling_params import MAX_LOGPROBS

Float = Annotated[float, Strict(), AllowInfNan(False)]  # accepts 1 and 1.0, not "1", true or NaN
Int64 = Annotated[int, Strict(), Field(ge=-(2**63), le=2**63 - 1)]
TokenId = Annotated[int, Strict(), Field(ge=0, le=2**31 - 1)]
MAX_N = 128  # OpenAI's limit for n
MAX_STOP = 16  # stop strings per request


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow")  # OpenAI ignores fields it does not know


class StreamOptions(_Request):
    include_usage: Optional[StrictBool] = False


class _SamplingRequest(_Request):
    """Fields shared by /v1/completions and /v1/chat/completions."""

    model: Optional[StrictStr] = None  # None: the served model
    n: Optional[StrictInt] = Field(1, ge=1, le=MAX_N)
    max_tokens: Optional[StrictInt] = Field(None, ge=1, description="None: up to the context length")
    temperature: Optional[Float] = Field(None, ge=0, le=2, description="None: 1.0; 0: greedy")
    top_p: Optional[Float] = Field(None, gt=0, le=1)
    top_k: Optional[StrictInt] = Field(None, ge=-1, description="-1 or 0: off (vLLM extension)")
    min_p: Optional[Float] = Field(None, ge=0, le=1)
    repetition_penalty: Optional[Float] = Field(None, gt=0, le=100)
    presence_penalty: Optional[Float] = Field(None, ge=-2, le=2)
    frequency_penalty: Optional[Float] = Field(None, ge=-2, le=2)
    seed: Optional[Int64] = None
    stop: Optional[Union[StrictStr, Annotated[list[StrictStr], Field(max_length=MAX_STOP)]]] = None
    stop_token_ids: Optional[Annotated[list[TokenId], Field(max_length=MAX_STOP * 8)]] = None
    ignore_eos: Optional[StrictBool] = False
    min_tokens: Optional[StrictInt] = Field(0, ge=0)
    skip_special_tokens: Optional[StrictBool] = True
    include_stop_str_in_output: Optional[StrictBool] = False
    stream: Optional[StrictBool] = False
    stream_options: Optional[StreamOptions] = None
    user: Optional[StrictStr] = None
    logit_bias: Optional[dict[str, Float]] = Field(None, description="not supported: must be empty")


class CompletionRequest(_SamplingRequest):
    prompt: Union[
        StrictStr,
        Annotated[list[StrictStr], Field(min_length=1)],
        Annotated[list[TokenId], Field(min_length=1)],
        Annotated[list[Annotated[list[TokenId], Field(min_length=1)]], Field(min_length=1)],
    ]
    logprobs: Optional[StrictInt] = Field(None, ge=0, le=MAX_LOGPROBS)
    echo: Optional[StrictBool] = False
    best_of: Optional[StrictInt] = Field(None, ge=1, le=MAX_N, description="only best_of == n is supported")
    suffix: Optional[StrictStr] = Field(None, description="not supported: must be null")


class TextContent(_Request):
    type: Literal["text"]
    text: StrictStr


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Optional[Union[StrictStr, list[TextContent]]] = None
    name: Optional[StrictStr] = None


class ChatCompletionRequest(_SamplingRequest):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Optional[StrictInt] = Field(None, ge=1)
    logprobs: Optional[StrictBool] = False
    top_logprobs: Optional[StrictInt] = Field(None, ge=0, le=MAX_LOGPROBS)
    add_generation_prompt: Optional[StrictBool] = True
    continue_final_message: Optional[StrictBool] = False
    chat_template_kwargs: Optional[dict[str, Any]] = None


class TokenizeCompletionRequest(_Request):
    model: Optional[StrictStr] = None
    prompt: StrictStr
    add_special_tokens: Optional[StrictBool] = True
    return_token_strs: Optional[StrictBool] = False


class TokenizeChatRequest(_Request):
    model: Optional[StrictStr] = None
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    add_generation_prompt: Optional[StrictBool] = True
    continue_final_message: Optional[StrictBool] = False
    add_special_tokens: Optional[StrictBool] = False
    return_token_strs: Optional[StrictBool] = False
    chat_template_kwargs: Optional[dict[str, Any]] = None


TokenizeRequest = Union[TokenizeCompletionRequest, TokenizeChatRequest]


class DetokenizeRequest(_Request):
    model: Optional[StrictStr] = None
    tokens: list[TokenId]


# --------------------------------------------------------------------------- responses


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: Optional[str] = None
    code: Optional[Union[str, int]] = None


class ErrorResponse(BaseModel):
    error: ErrorInfo


class PromptTokensDetails(BaseModel):
    cached_tokens: int


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: Optional[PromptTokensDetails] = None


class CompletionLogprobs(BaseModel):
    text_offset: list[int]
    token_logprobs: list[Optional[float]]
    tokens: list[str]
    top_logprobs: list[Optional[dict[str, float]]]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: Optional[CompletionLogprobs] = None
    finish_reason: Optional[str] = None  # "stop" | "length" | "abort"
    stop_reason: Optional[Union[int, str]] = None  # vLLM: the stop string or token id that ended it


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    system_fingerprint: Optional[str] = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: Optional[list[int]] = None


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatChoiceLogprobs(BaseModel):
    content: Optional[list[ChatTokenLogprob]] = None


class ChatResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: Optional[str] = None


class ChatChoice(BaseModel):
    index: int
    message: ChatResponseMessage
    logprobs: Optional[ChatChoiceLogprobs] = None
    finish_reason: Optional[str] = None
    stop_reason: Optional[Union[int, str]] = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: Optional[str] = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "tenk"
    root: Optional[str] = None
    parent: Optional[str] = None
    max_model_len: Optional[int] = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: Optional[list[str]] = None


class DetokenizeResponse(BaseModel):
    prompt: str


class VersionResponse(BaseModel):
    version: str
