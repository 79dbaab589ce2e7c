"""Settings of `lmstack serve` (TOML file and --set like every command; flags for the common ones)."""

from __future__ import annotations

from dataclasses import dataclass, field

from lmstack.config import ConfigError
from lmstack.infer.engine import EngineConfig


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"  # loopback by default: exposing a model is a decision, not an accident
    port: int = 8000
    model_name: str | None = None  # the id in /v1/models; default: the checkpoint dir's name
    api_key: str | None = None  # default: $LMSTACK_API_KEY; none = no authentication
    max_queue: int = 256  # requests waiting for the engine before new ones get 429
    max_body_bytes: int = 4 * 2**20
    graceful_shutdown_s: float = 30.0  # how long SIGTERM waits for requests in flight
    # torch CPU threads; 0 = all cores but one. The spare core keeps the HTTP event loop responsive: on a
    # busy 2-core machine, two torch threads plus the loop made decode ~15x slower (OpenMP barriers starve).
    torch_threads: int = 0
    engine: EngineConfig = field(default_factory=EngineConfig)

    def validate(self) -> None:
        if not 0 <= self.port < 65536:
            raise ConfigError(f"port must be in [0, 65535], got {self.port}")
        if self.torch_threads < 0:
            raise ConfigError(f"torch_threads must be >= 0 (0 = all cores but one), got {self.torch_threads}")
        if self.max_queue < 1:
            raise ConfigError(f"max_queue must be >= 1 (requests waiting before new ones get 429), got {self.max_queue}")
        if self.max_body_bytes < 1024:
            raise ConfigError(f"max_body_bytes must be >= 1024, got {self.max_body_bytes}")
        if self.graceful_shutdown_s < 0:
            raise ConfigError(f"graceful_shutdown_s must be >= 0 (seconds SIGTERM waits for requests in flight), "
                              f"got {self.graceful_shutdown_s}")
