"""The settings: a search config's schema, its loading and validation, and the space it describes."""

from peft_search.search.settings.loading import default_config_path, load_config, parse_config
from peft_search.search.settings.schema import SearchConfig

__all__ = ["SearchConfig", "default_config_path", "load_config", "parse_config"]
