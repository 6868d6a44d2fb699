"""Configuration: the TOML file, its schema and its validation."""

from triplicate.config.load import config_path, load_config, parse_config, validate_config
from triplicate.config.model import Config, check_name

__all__ = ["Config", "check_name", "config_path", "load_config", "parse_config", "validate_config"]
