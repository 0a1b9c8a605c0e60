"""Serving settings, overridable from the environment (``ENCORE_*``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServingSettings(BaseSettings):
    """Settings of the serving app; each can be set as ``ENCORE_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="ENCORE_", extra="ignore")

    models_dir: Path = Field(default=Path("models"))
    """Artifact store written by ``encore train``; the app serves its ``current``."""
    reload_interval_s: float = Field(default=10.0, ge=0)
    """How often to look for a newly published version (0 turns polling off)."""
    admin_token: SecretStr | None = None
    """Bearer token for ``POST /v1/admin/reload``; unset disables the endpoint."""
    max_batch: int = Field(default=1000, ge=1, le=1000)
    """Most customers in one batch request: the API's cap of 1,000 or lower
    (a larger value would have no effect, so it is refused at startup)."""
    max_batch_picks: int = Field(default=20_000, ge=1)
    """Most picks one batch request may ask for (customers times ``k``): the
    bound on one request's work, so that no client can stall a worker."""
    max_body_bytes: int = Field(default=1 << 20, ge=1024)
    """Largest request body accepted; a larger one is answered with 413."""
    request_deadline_s: float = Field(default=10.0, gt=0)
    """A request that has not started answering by then gets a 503."""
    blas_threads: int = Field(default=1, ge=1)
    """BLAS threads per worker; more than one oversubscribes the cores under load."""
    verify_hashes: bool = True
    """Check every file's sha256 before serving a version."""
    freeze_gc: bool = True
    """After each version loads, exempt the objects then alive from Python's
    cyclic garbage collector (``gc.freeze``): a full collection over them stalls
    the worker for ~30 ms, about a dozen times a minute under load."""
    due_probability_horizon_days: float = Field(default=30.0, gt=0)
    """Window in which a rebuy counts as "due" for the reason shown with a pick."""

    @field_validator("models_dir")
    @classmethod
    def _expand(cls, v: Path) -> Path:
        return v.expanduser()
