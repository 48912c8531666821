"""How the CLI lays out tables for people."""

def test_table_cells_fit_terminal_columns_for_wide_characters_and_say_when_cut():
    from facesearch.cli.format import _width, fit

    assert _width("李小龙") == 6 and _width("José") == 4 and _width("Jose\u0301") == 4
    assert fit("李小龙", 8) == "李小龙  " and _width(fit("李小龙", 8)) == 8
    cut = fit("Maria_del_Carmen_de_la_Concepcion_Sanchez", 32)
    assert cut.endswith("…") and _width(cut) == 32
    wide = fit("李" * 20, 9)  # a wide character never straddles the edge
    assert wide.endswith("…") and _width(wide) <= 9 and wide.rstrip().endswith("…")
