from src.utils.config_resolvers import register_resolvers

register_resolvers()
