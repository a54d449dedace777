"""The settings: a search config's schema, its loading and validation, and the space it describes."""

from search.settings.loading import default_config_path, load_config, parse_config
from search.settings.schema import SearchConfig

__all__ = ["SearchConfig", "default_config_path", "load_config", "parse_config"]
