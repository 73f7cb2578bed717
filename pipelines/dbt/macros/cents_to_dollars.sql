{#- jafgen writes money as integer cents; the warehouse speaks dollars. -#}
{% macro cents_to_dollars(column_name) -%}
    round(cast({{ column_name }} as numeric) / 100, 2)
{%- endmacro %}
