{#- The vars and arguments that reach SQL as literals: each is checked for its shape first,
    so a value that is not a day or an instant fails the build with one line and never runs. -#}

{% macro day_var(name) -%}
    {{- return(checked_day(var(name), "vars." ~ name)) -}}
{%- endmacro %}

{% macro checked_day(value, what) -%}
    {%- set text = value | string -%}
    {%- if value is none or not modules.re.fullmatch('[0-9]{4}-[0-9]{2}-[0-9]{2}', text) -%}
        {{ exceptions.raise_compiler_error(what ~ " '" ~ text ~ "' is not a date: use YYYY-MM-DD") }}
    {%- endif -%}
    {{- return(text) -}}
{%- endmacro %}

{% macro checked_instant(value, what) -%}
    {#- An ISO-8601 date and time, e.g. 2026-11-27T13:00:00+00:00. -#}
    {%- set text = value | string -%}
    {%- if value is none or not modules.re.fullmatch(
            '[0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9]{2}:[0-9]{2}(:[0-9]{2}([.][0-9]{1,9})?)?)?(Z|[+-][0-9]{2}:?[0-9]{2})?', text) -%}
        {{ exceptions.raise_compiler_error(what ~ " '" ~ text ~ "' is not an ISO-8601 date and time") }}
    {%- endif -%}
    {{- return(text) -}}
{%- endmacro %}
