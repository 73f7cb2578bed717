{#-
    A custom schema is used as it is (`staging`, `marts`), not appended to the target schema as dbt
    does by default. The `schema_prefix` var lets tests and CI build into throwaway schemas
    (`t_1234_staging`) without touching the shared ones.
-#}
{% macro generate_schema_name(custom_schema_name, node) -%}
    {%- if custom_schema_name is none -%}
        {{ target.schema | trim }}
    {%- else -%}
        {{ var('schema_prefix', '') ~ (custom_schema_name | trim) }}
    {%- endif -%}
{%- endmacro %}
