namespace AutoPrune;

/// <summary>Roles of a conversation turn.</summary>
public enum TurnRole { System, User, Assistant }
